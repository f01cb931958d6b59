"""The engine's torch-free core: static config, prompt building, request records and the
scheduler (which requests run this step, and what their results mean). The runner below
computes on these records; models/engine.py ties the two (schedule -> run -> update)."""
