"""Running jobs: launchers (local, docker, apptainer) put a command in its environment,
schedulers (none, slurm, lsf) run it, `jobs` tracks every job in the tracking database,
`submit` ties them to setups and worker configs."""
