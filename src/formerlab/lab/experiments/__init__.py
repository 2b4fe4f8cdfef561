"""One module per registered experiment; importing this package registers them all."""

from . import position_probe

__all__ = ["position_probe"]
