"""The driver: checks the config, inputs and models, plans the pools, commits each input file, reports. It never
touches a row."""
