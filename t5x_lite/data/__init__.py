"""Data: document sources, packing into fixed-length rows, and the grain pipeline."""
