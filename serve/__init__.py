"""HTTP edge of csm-serve: schemas, routes, audio encoding, text splitting. Never imports torch."""
