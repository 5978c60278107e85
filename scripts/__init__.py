"""Commands run from the repository root as ``python -m scripts.<name>`` (no sys.path edits)."""
