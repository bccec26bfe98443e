"""The lake: DuckLake tables (SQL catalog + Parquet files), idempotent writes, voxel encoding."""

from __future__ import annotations

from theralake.lake import ducklake, rows, views
from theralake.lake.schemas import CORE_TABLES, SCHEMA_VERSION, SCHEMAS
from theralake.lake.store import Lake, LakeError, default_lake_path, stable_hash
from theralake.lake.volume import Volume

__all__ = ["CORE_TABLES", "SCHEMAS", "SCHEMA_VERSION", "Lake", "LakeError", "Volume",
           "default_lake_path", "ducklake", "rows", "stable_hash", "views"]
