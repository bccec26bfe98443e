"""theralake.modeling."""
