"""Data: tabular loaders, validation into integer datasets, the bundled example generator."""
