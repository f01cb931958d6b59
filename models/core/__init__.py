"""Engine core: static config, prompt building, request records, the torch-free scheduler,
and the Engine that ties them to the runner (schedule -> run -> update)."""
