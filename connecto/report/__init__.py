"""`connecto report`: an experiment as one HTML page with its plots (see `build`)."""
