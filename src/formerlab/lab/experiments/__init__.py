"""One module per registered experiment; importing this package registers them all."""

from . import dialog, nbce_retrieval, position_probe, unargmaxable

__all__ = ["dialog", "nbce_retrieval", "position_probe", "unargmaxable"]
