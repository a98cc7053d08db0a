"""Performance measurements (`make bench`): each `bench_*.py` module has `main()`."""
