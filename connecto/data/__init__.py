"""EM volumes: zarr/N5 access, ingest from HDF5/TIFF, synthetic synapse data."""
