"""Published numbers of the length-extrapolation series ,
kept as documentation to print beside our measurements — never used as thresholds.

GAU-α-style LM, ≈100M parameters, 24 layers, trained at 512, tested at 4096 (8×); per-token
next-token accuracy in %: ``(512, 4096 repeated, 4096 non-repeated)``.
"""

from __future__ import annotations

__all__ = ["MASTER_TABLE", "MASTER_TABLE_SETUP"]

MASTER_TABLE_SETUP = "GAU ≈100M, Post-Norm, train 512 → test 4096 (8×), accuracy %"

#: our method name -> (blog row label, 512, 4096 rep., 4096 non-rep.)
MASTER_TABLE: dict[str, tuple[str, float, float, float]] = {
    "baseline": ("Baseline", 49.41, 24.17, 23.16),
    "baseline-logn_pretrain": ("Baseline-log n", 49.40, 24.60, 24.02),
    "pi": ("PI-RoPE", 49.41, 15.04, 13.54),
    "pi-logn_pretrain": ("PI-RoPE-log n", 49.40, 14.99, 16.51),
    "ntk_old": ("NTK-RoPE-old", 49.41, 51.28, 39.27),
    "ntk_old-logn_pretrain": ("NTK-RoPE-log n-old", 49.40, 61.71, 43.75),
    "ntk_fixed": ("NTK-RoPE-fixed", 49.41, 51.86, 39.61),
    "ntk_fixed-logn_dagger": ("NTK-RoPE-log n†-fixed", 49.41, 55.94, 41.11),
    "ntk_fixed-logn_pretrain": ("NTK-RoPE-log n-fixed", 49.40, 62.85, 44.14),
    "ntk_mixed": ("NTK-RoPE-mixed", 49.41, 53.09, 40.12),
    "ntk_mixed-logn_dagger": ("NTK-RoPE-log n†-mixed", 49.41, 59.11, 42.38),
    "ntk_mixed-logn_pretrain": ("NTK-RoPE-log n-mixed", 49.40, 68.91, 45.41),
    "rerope": ("ReRoPE-w256", 49.41, 77.90, 48.48),
    "rerope-logn_dagger": ("ReRoPE-w256-log n†", 49.41, 82.40, 48.85),
    "rerope-logn_pretrain": ("ReRoPE-w256-log n", 49.40, 85.12, 49.07),
    "hwfa": ("HWFA", 48.70, 80.84, 48.15),
    "invleaky": ("InvLeaky ReRoPE-w128-log n", 49.38, 82.25, 48.32),
    "invleaky-b8": ("InvLeaky ReRoPE-w128-b8-log n", 49.62, 81.15, 48.85),
    "hwfa2": ("HWFA2 w64-f2", 49.46, 84.43, 49.36),
}
