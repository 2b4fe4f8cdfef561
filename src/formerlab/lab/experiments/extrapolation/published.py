"""Published numbers of the length-extrapolation series (kexue.fm/archives/9675, 9706, 9708, 9603,
9728, 9731), kept as documentation to print beside our measurements — never thresholds.

GAU-α-style LM, ≈100M parameters, 24 layers, Post-Norm, trained at 512, tested at 4096 (8×);
per-token next-token accuracy in %: ``(512, 4096 repeated, 4096 non-repeated)``. Only the
*orderings* can be compared with a small byte-level reproduction, never the raw numbers.

Rows are keyed by our method names where our method is the same construction relative to the
training length (ReRoPE ``w = 256`` of 512 is our ``w = L/2``, ``w = 128`` our ``w = L/4``,
``w = 512`` our ``w = L``; HWFA2 ``w128-f2`` is our window ``L/4`` with two full layers).
"""

from __future__ import annotations

__all__ = ["MASTER_TABLE", "MASTER_TABLE_SETUP", "REROPE_WINDOW_TABLE"]

MASTER_TABLE_SETUP = "GAU ≈100M, Post-Norm, train 512 → test 4096 (8×), accuracy %"

#: our method name -> (blog row label, 512, 4096 rep., 4096 non-rep.); master table (9675, 9706,
#: 9708, 9603, 9728), the ReRoPE window ablation (9708) and the HWFA2 table (9731)
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
    "rerope-w_quarter": ("ReRoPE-w128", 49.41, 76.11, 47.82),
    "rerope-w_quarter-logn_dagger": ("ReRoPE-w128-log n†", 49.41, 82.28, 48.78),
    "rerope-w_full": ("ReRoPE-w512", 49.41, 7.09, 8.25),
    "rerope-w_full-logn_dagger": ("ReRoPE-w512-log n†", 49.41, 7.08, 8.25),
    "hwfa": ("HWFA", 48.70, 80.84, 48.15),
    "invleaky": ("InvLeaky ReRoPE-w128-log n", 49.38, 82.25, 48.32),
    "hwfa2": ("HWFA2 w128-f2", 49.35, 83.09, 48.97),
}

#: ReRoPE window ablation (9708): w -> {"plain" | "log n†" | "log n": (4096 rep., 4096 non-rep.)}
REROPE_WINDOW_TABLE: dict[int, dict[str, tuple[float, float]]] = {
    64: {"plain": (69.39, 45.19), "log n†": (78.58, 47.42), "log n": (84.38, 48.14)},
    128: {"plain": (76.11, 47.82), "log n†": (82.28, 48.78), "log n": (85.47, 48.87)},
    256: {"plain": (77.90, 48.48), "log n†": (82.40, 48.85), "log n": (85.12, 49.07)},
    384: {"plain": (70.72, 48.15), "log n†": (76.42, 48.31), "log n": (83.24, 48.62)},
    512: {"plain": (7.09, 8.25), "log n†": (7.08, 8.25), "log n": (15.84, 10.83)},
}
