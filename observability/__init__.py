"""Grafana dashboard and Prometheus alert rules, produced by code (`python -m observability.build`)."""
