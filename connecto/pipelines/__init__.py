"""gunpowder training pipelines, one module per task."""

import dask

# funlib reads arrays through dask. Its thread pool costs more than a small crop's read, and
# a pool started before gunpowder's PreCache forks its workers deadlocks them (the child
# inherits a locked queue), so every pipeline reads synchronously.
dask.config.set(scheduler="synchronous")
