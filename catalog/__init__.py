"""Parquet catalogs: explicit schemas, atomic part files, compaction and search."""
