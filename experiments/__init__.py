"""Studies: one folder each, with its plan (README), runner, report and committed results."""
