"""shelley benchmarks: scripts that print and save numbers (speed and load are never asserted in tests)."""
