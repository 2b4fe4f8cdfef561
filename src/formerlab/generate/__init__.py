"""Decoding and long-context inference: NBCE, dialogue formatting, unargmaxable tokens."""
