"""Per-family name tables (one declarative table per model family)."""
