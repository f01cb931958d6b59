"""Apps that are clients of csm-serve's HTTP API (not part of the server)."""
