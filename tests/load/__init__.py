"""Bounded load against the running service (issue 9): the driver is bench/load.py, shared with the benchmark."""
