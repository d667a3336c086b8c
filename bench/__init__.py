"""Benchmarks: each metric is a ratio against a baseline measured in the same run."""
