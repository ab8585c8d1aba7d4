"""Backends that turn an integer table pipeline into a data-plane program."""
