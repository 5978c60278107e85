"""Experts that mean styles, for real: the form-style study in the glyph world (see README.md)."""
