"""One module per registered experiment; importing this package registers them all."""

from . import contrastive_accumulation as contrastive_accumulation
from . import emo_vs_ce as emo_vs_ce
from . import fsq_vs_vq as fsq_vs_vq
from . import position_probe

__all__ = ["position_probe"]
