"""theralake.dosimetry."""
