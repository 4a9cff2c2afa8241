"""The data half: one module per stage.

ingest, validate_raw, clean, dedup, split, augment, validate_splits.
"""
