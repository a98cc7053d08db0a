"""gunpowder training pipelines, one module per task."""
