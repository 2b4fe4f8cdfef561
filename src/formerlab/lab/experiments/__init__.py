"""One module per registered experiment; importing this package registers them all."""

from . import (
    diffusion_2d,
    hubness,
    integrated_gradients,
    position_probe,
)

__all__ = [
    "diffusion_2d",
    "hubness",
    "integrated_gradients",
    "position_probe",
]
