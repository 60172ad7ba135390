"""Beacon: a WeCom bot for private-domain B2B sales enablement."""

__version__ = "0.1.0"
