"""theralake.features."""
