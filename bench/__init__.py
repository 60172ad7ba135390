"""Beacon's benchmarks: `python -m bench [NAME ...]` (all of them without a name). See bench/harness.py."""
