"""theralake.ingest."""
