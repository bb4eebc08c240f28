"""The deployable services; each has a thin `__main__` and its domain modules."""
