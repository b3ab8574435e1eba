"""HTTP surfaces: the control-plane api and the ingest service (routes, dependencies, schemas)."""
