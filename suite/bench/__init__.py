"""Benchmarks: scripts that measure and record (``python -m suite.bench.<name>``)."""
