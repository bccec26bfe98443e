"""theralake.registry."""
