"""Devices and dtypes, built-in seeded models, and the local checkpoint loader."""
