"""gunpowder training pipelines, one module per task."""

import dask
from numcodecs import blosc

# funlib reads arrays through dask. Its thread pool costs more than a small crop's read, and
# a pool started before gunpowder's PreCache forks its workers deadlocks them (the child
# inherits a locked queue), so every pipeline reads synchronously.
dask.config.set(scheduler="synchronous")
# Cache workers (processes) are the pipelines' parallelism: blosc's own decoding threads,
# min(8, cores) in every process, would only oversubscribe the cores the workers share.
blosc.use_threads = False
