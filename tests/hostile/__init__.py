"""Hostile inputs and faults against the running service, through its HTTP API on 127.0.0.1 (issue 9)."""
