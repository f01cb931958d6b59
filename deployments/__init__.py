"""Glue between the HTTP edge (serve/) and the engine (models/); Ray Serve deployments live here."""
