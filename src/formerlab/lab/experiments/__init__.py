"""One module per registered experiment; importing this package registers them all."""

from . import extrapolation, position_probe

__all__ = ["extrapolation", "position_probe"]
