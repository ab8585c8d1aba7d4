"""Passes over the IR: lowering, table merging, range encoding, default elision, allocation."""
