"""GPU checks, run from the repository root as ``python -m scripts.gpu_checks.<name>``."""
