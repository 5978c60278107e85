"""Development helpers shared by tests, benchmarks and the demo (never imported by the pack)."""
