"""One module per registered experiment; importing this package registers them all."""

from . import (
    integrated_gradients,
    position_probe,
)

__all__ = [
    "integrated_gradients",
    "position_probe",
]
