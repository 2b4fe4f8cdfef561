"""One module per registered experiment; importing this package registers them all."""

from . import long_context_scaling, lra_spt, position_probe

__all__ = ["long_context_scaling", "lra_spt", "position_probe"]
