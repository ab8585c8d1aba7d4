"""Frontends: the Alchemy-style Python API and YAML specs, both producing a `Plan`."""
