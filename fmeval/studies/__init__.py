"""Studies: a benchmark grid (models x datasets x sizes x modes x seeds) as one unit of work."""
