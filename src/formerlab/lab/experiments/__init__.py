"""One module per registered experiment; importing this package registers them all."""

from . import extrapolation

__all__ = ["extrapolation"]
