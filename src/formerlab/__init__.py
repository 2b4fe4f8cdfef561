"""formerlab: tested PyTorch components and a reproduction lab for the Transformer research of
the "Scientific Spaces" blog (kexue.fm)."""

from .config import TrainConfig
from .models.config import ModelConfig
from .registry import Registry

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Registry", "TrainConfig", "__version__"]
