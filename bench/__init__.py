"""Benchmarks: scripts that measure and record figures in bench/results/ (see each docstring)."""
