"""Retention: the `prune_store` job and its daily schedule."""
