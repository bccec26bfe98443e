"""theralake: image-based dosimetry for radiopharmaceutical therapy on a Parquet/DuckDB lake."""

from __future__ import annotations

__version__ = "0.1.0"
