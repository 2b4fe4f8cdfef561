"""One module per registered experiment; importing this package registers them all."""

from . import (
    hubness,
    integrated_gradients,
    position_probe,
)

__all__ = [
    "hubness",
    "integrated_gradients",
    "position_probe",
]
