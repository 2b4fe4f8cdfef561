"""Linear recurrences for long sequences: parallel scans, LRU / SLRU, RWKV's WKV, decoding states.

Low layer: imports only torch, numpy and :mod:`formerlab.registry`.
"""

from ..nn.state import LayerState, RecurrentState
from .lru import LRU, SLRU, LRUState, ring_init
from .rwkv import rwkv_wkv
from .scan import SCANS, linear_scan, register_scan

__all__ = [
    "LRU",
    "SCANS",
    "SLRU",
    "LRUState",
    "LayerState",
    "RecurrentState",
    "linear_scan",
    "register_scan",
    "ring_init",
    "rwkv_wkv",
]
