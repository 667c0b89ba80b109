"""Fault injection and crash simulation used by tests and tools (crash sweeps, fault storms)."""
