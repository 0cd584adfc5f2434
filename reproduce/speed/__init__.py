"""Speed: the pytest-benchmark runner and the one-shot GPU check."""
