"""Upstream drift (proxy mode): re-hash what clients download straight from the factory."""
