"""theralake.synth."""
