"""Data layer: readers, offline ir_datasets, BM25 first stage, training groups (no Ray)."""
