"""numba kernels of the unigram lattice: trie, Viterbi, perfect/legacy sampling, forward–backward.

Imported only by :mod:`formerlab.tokenize.engine` when numba is installed (extra ``fast``).
The algorithms, arrival orders and floating-point formulas are those of :mod:`.reference`
(kexue.fm/archives/9752, 9768, 9811); the tests compare both token for token and sample for sample.

Data layout:

- The vocabulary is a **reversed trie** in double-array form (``base``/``check``, Aoe 1989;
  built by :mod:`._trie`):
  the child of position ``p`` along byte ``c`` is ``t = base[p] + c`` if ``check[t] == p``.
  Walking it from an end position ``e`` over ``text[e-1], text[e-2], …`` visits every match ending
  at ``e`` from the shortest to the longest (the canonical arrival order); ``pid[t] ≥ 0`` marks a
  position that ends a piece.
- A batch of texts is one ``uint8`` buffer plus ``offsets`` (``n + 1`` entries); results are a
  flat ``int32`` array of piece indices plus offsets and a status (-1 = ok, else the index of the
  first text that cannot be segmented).
- Samplers take one 64-bit SplitMix64 seed per text and draw one uniform per reachable arrival
  that finds the reservoir non-empty (the first one is kept for sure), as the reference does.
"""

from __future__ import annotations

import math

import numba
import numpy as np

NEG_INF = -np.inf
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S11 = np.uint64(11)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_TWO_M53 = 2.0**-53
_TINY = 2.0**-400
_HUGE = 2.0**400
_LN2 = math.log(2.0)

jit = numba.njit(cache=True, nogil=True)


@jit
def _uniform(state):
    """SplitMix64 step: returns (new_state, uniform in [0, 1))."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return state, float(np.int64(z >> _S11)) * _TWO_M53  # < 2^53: exact, fast conversion


@jit
def _child(pos, byte, trie):
    """Double-array step: the child of position ``pos`` along ``byte``, or -1.

    ``trie`` interleaves ``base`` and ``check`` (``int32``: ``trie[2p] = base[p]``,
    ``trie[2p + 1] = check[p]``) so one cache line serves both loads of a step.
    """
    t = trie[2 * pos] + byte
    if trie[2 * t + 1] == pos:
        return t
    return -1


@jit
def _emit(back_s, back_p, n, out, pos):
    """Write the backtracked piece indices of a text of length ``n`` at ``out[pos:]``."""
    k = 0
    e = n
    while e > 0:
        k += 1
        e = back_s[e]
    e = n
    i = pos + k - 1
    while e > 0:
        out[i] = back_p[e]
        i -= 1
        e = back_s[e]
    return pos + k


@jit
def _max_len(offsets):
    m = 0
    for t in range(offsets.shape[0] - 1):
        m = max(m, offsets[t + 1] - offsets[t])
    return m


@jit
def viterbi_batch(buf, offsets, trie, node_pid, scores, max_piece):
    """Viterbi decode every text; returns ``(ids, out_offsets, status)``.

    Matches arrive shortest first and ``>=`` keeps the last of tied candidates: the longest last
    piece wins a tie, as in the reference.
    """
    n_texts = offsets.shape[0] - 1
    m = _max_len(offsets)
    best = np.empty(m + 1)
    back_s = np.empty(m + 1, np.int64)
    back_p = np.empty(m + 1, np.int32)
    out = np.empty(offsets[n_texts] - offsets[0], np.int32)
    out_off = np.zeros(n_texts + 1, np.int64)
    pos = 0
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        best[0] = 0.0
        for e in range(1, n + 1):
            bb = NEG_INF
            bs = -1
            bp = -1
            node = 0
            for j in range(e - 1, max(0, e - max_piece) - 1, -1):
                node = _child(node, np.int64(buf[a + j]), trie)
                if node < 0:
                    break
                pid = node_pid[node]
                if pid >= 0:
                    cand = best[j] + scores[pid]
                    if cand >= bb:
                        bb = cand
                        bs = j
                        bp = pid
            best[e] = bb
            back_s[e] = bs
            back_p[e] = bp
        if n > 0 and best[n] == NEG_INF:
            return out[:0], out_off, t
        pos = _emit(back_s, back_p, n, out, pos)
        out_off[t + 1] = pos
    return out[:pos], out_off, -1


@jit
def _collect(buf, a, e, trie, node_pid, max_piece, cs, cp):
    """Matches ending at ``e`` (shortest first) into ``cs`` (starts) / ``cp`` (pieces)."""
    nc = 0
    node = 0
    for j in range(e - 1, max(0, e - max_piece) - 1, -1):
        node = _child(node, np.int64(buf[a + j]), trie)
        if node < 0:
            break
        pid = node_pid[node]
        if pid >= 0:
            cs[nc] = j
            cp[nc] = pid
            nc += 1
    return nc


@jit
def sample_batch(buf, offsets, trie, node_pid, scores, max_piece, alpha, seeds):
    """Perfect sampling (kexue.fm/archives/9811): one pass, weighted reservoir per end position.

    The matches ending at ``e`` arrive in walk order (shortest first). ``top`` is the running
    maximum of ``lw = logZ[s] + α·v`` and ``total = Σ exp(lw − top)`` (rescaled when ``top``
    grows), so each match costs one ``exp``; keep the arrival if ``u·total < w``.
    """
    n_texts = offsets.shape[0] - 1
    m = _max_len(offsets)
    logz = np.empty(m + 1)
    back_s = np.empty(m + 1, np.int64)
    back_p = np.empty(m + 1, np.int32)
    out = np.empty(offsets[n_texts] - offsets[0], np.int32)
    out_off = np.zeros(n_texts + 1, np.int64)
    pos = 0
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        state = seeds[t]
        logz[0] = 0.0
        for e in range(1, n + 1):
            top = NEG_INF
            total = 0.0
            bs = -1
            bp = -1
            node = 0
            for j in range(e - 1, max(0, e - max_piece) - 1, -1):
                node = _child(node, np.int64(buf[a + j]), trie)
                if node < 0:
                    break
                pid = node_pid[node]
                if pid >= 0:
                    lw = logz[j] + alpha * scores[pid]
                    if total == 0.0:  # empty reservoir: a reachable arrival is kept, no draw
                        if lw > NEG_INF:
                            top = lw
                            total = 1.0
                            bs = j
                            bp = pid
                        continue
                    state, u = _uniform(state)
                    if lw > top:
                        total = total * np.exp(top - lw) + 1.0
                        top = lw
                        w = 1.0
                    elif lw > NEG_INF:
                        w = np.exp(lw - top)
                        total += w
                    else:
                        w = 0.0
                    if u * total < w:
                        bs = j
                        bp = pid
            logz[e] = top + np.log(total) if total > 0.0 else NEG_INF
            back_s[e] = bs
            back_p[e] = bp
        if n > 0 and logz[n] == NEG_INF:
            return out[:0], out_off, t
        pos = _emit(back_s, back_p, n, out, pos)
        out_off[t + 1] = pos
    return out[:pos], out_off, -1


@jit
def sample_linear_batch(buf, offsets, trie, node_pid, ew, max_piece, seeds):
    """Perfect sampling in scaled linear space: the same reservoir without any ``exp``.

    ``ew[p] = exp(α·v_p − c·len_p)``: the per-byte shift ``c`` multiplies every segmentation of a
    text by the same ``e^{−cL}``, so the distribution is unchanged. ``z[e] = Σ z[s]·ew`` is kept in
    ``[2^-400, 2^400]`` by rescaling the live window by an exact power of two, which changes no
    ratio. The engine only uses this kernel when every ``ew`` lies in ``[2^-200, 2^200]``; a text
    whose ``z`` ends at 0 returns its index as status and the engine re-runs the log-space kernel.
    Same uniforms, same order as :func:`sample_batch`; decisions agree unless a uniform falls
    within rounding error (~1e-16) of an acceptance threshold.
    """
    n_texts = offsets.shape[0] - 1
    m = _max_len(offsets)
    z = np.empty(m + 1)
    back_s = np.empty(m + 1, np.int64)
    back_p = np.empty(m + 1, np.int32)
    out = np.empty(offsets[n_texts] - offsets[0], np.int32)
    out_off = np.zeros(n_texts + 1, np.int64)
    pos = 0
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        state = seeds[t]
        z[0] = 1.0
        for e in range(1, n + 1):
            total = 0.0
            bs = -1
            bp = -1
            node = 0
            for j in range(e - 1, max(0, e - max_piece) - 1, -1):
                node = _child(node, np.int64(buf[a + j]), trie)
                if node < 0:
                    break
                pid = node_pid[node]
                if pid >= 0:
                    w = z[j] * ew[pid]
                    if total == 0.0:  # empty reservoir: a reachable arrival is kept, no draw
                        if w > 0.0:
                            total = w
                            bs = j
                            bp = pid
                        continue
                    state, u = _uniform(state)
                    total += w
                    # branch-free keep: the decision is random, a branch mispredicts half the time
                    keep = np.int64(u * total < w)
                    bs += keep * (j - bs)
                    bp += keep * (pid - bp)
            z[e] = total
            if total > 0.0 and (total < _TINY or total > _HUGE):
                scale = math.ldexp(1.0, -math.frexp(total)[1])
                for q in range(max(0, e - max_piece), e + 1):
                    z[q] *= scale
            back_s[e] = bs
            back_p[e] = bp
        if n > 0 and z[n] == 0.0:
            return out[:0], out_off, t
        pos = _emit(back_s, back_p, n, out, pos)
        out_off[t + 1] = pos
    return out[:pos], out_off, -1


@jit
def _sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + np.exp(-x))
    z = np.exp(x)
    return z / (1.0 + z)


@jit
def legacy_batch(buf, offsets, trie, node_pid, scores, max_piece, alpha, seeds):
    """The biased pairwise sampler of kexue.fm/archives/9768 (ablation only).

    Matches are fed in BytePiece's order (longest first at each end), as in the post.
    """
    n_texts = offsets.shape[0] - 1
    m = _max_len(offsets)
    best = np.empty(m + 1)
    back_s = np.empty(m + 1, np.int64)
    back_p = np.empty(m + 1, np.int32)
    cs = np.empty(max_piece, np.int64)
    cp = np.empty(max_piece, np.int32)
    out = np.empty(offsets[n_texts] - offsets[0], np.int32)
    out_off = np.zeros(n_texts + 1, np.int64)
    pos = 0
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        state = seeds[t]
        best[0] = 0.0
        for e in range(1, n + 1):
            nc = _collect(buf, a, e, trie, node_pid, max_piece, cs, cp)
            bb = NEG_INF
            bs = -1
            bp = -1
            for q in range(nc - 1, -1, -1):
                if best[cs[q]] == NEG_INF:
                    continue
                cand = best[cs[q]] + scores[cp[q]]
                if bs >= 0:
                    state, u = _uniform(state)
                    if u >= _sigmoid(alpha * (cand - bb)):
                        continue
                bb = cand
                bs = cs[q]
                bp = cp[q]
            best[e] = bb
            back_s[e] = bs
            back_p[e] = bp
        if n > 0 and best[n] == NEG_INF:
            return out[:0], out_off, t
        pos = _emit(back_s, back_p, n, out, pos)
        out_off[t + 1] = pos
    return out[:pos], out_off, -1


@jit
def log_partition_batch(buf, offsets, trie, node_pid, scores, max_piece, alpha):
    """``logZ`` of every text: the forward recursion of the perfect sampler without sampling."""
    n_texts = offsets.shape[0] - 1
    logz = np.empty(_max_len(offsets) + 1)
    out = np.empty(n_texts)
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        _forward_log(buf, a, n, trie, node_pid, scores, max_piece, alpha, logz)
        out[t] = logz[n]
    return out


@jit
def _forward_log(buf, a, n, trie, node_pid, scores, max_piece, alpha, fwd):
    """``fwd[e] = log Σ_{seg of text[:e]} exp(α·score)`` with an online log-sum-exp."""
    fwd[0] = 0.0
    for e in range(1, n + 1):
        top = NEG_INF
        total = 0.0
        node = 0
        for j in range(e - 1, max(0, e - max_piece) - 1, -1):
            node = _child(node, np.int64(buf[a + j]), trie)
            if node < 0:
                break
            pid = node_pid[node]
            if pid >= 0:
                lw = fwd[j] + alpha * scores[pid]
                if lw > top:
                    total = total * np.exp(top - lw) + 1.0
                    top = lw
                elif lw > NEG_INF:
                    total += np.exp(lw - top)
        fwd[e] = top + np.log(total) if total > 0.0 else NEG_INF


@jit
def _forward_linear(buf, a, n, trie, node_pid, ew, shift, max_piece, fwd, z):
    """The same ``fwd`` in scaled linear space (no ``exp`` per match, see ``sample_linear_batch``).

    ``z[e]·2^G·e^{shift·e}`` is the forward sum, ``G`` the exponent removed so far by the exact
    power-of-two rescaling of the live window; ``fwd[e]`` is recorded in log space when computed.
    """
    z[0] = 1.0
    fwd[0] = 0.0
    g = 0.0
    for e in range(1, n + 1):
        total = 0.0
        node = 0
        for j in range(e - 1, max(0, e - max_piece) - 1, -1):
            node = _child(node, np.int64(buf[a + j]), trie)
            if node < 0:
                break
            pid = node_pid[node]
            if pid >= 0:
                total += z[j] * ew[pid]
        z[e] = total
        fwd[e] = np.log(total) + g * _LN2 + shift * e if total > 0.0 else NEG_INF
        if total > 0.0 and (total < _TINY or total > _HUGE):
            k = math.frexp(total)[1]
            scale = math.ldexp(1.0, -k)
            for q in range(max(0, e - max_piece), e + 1):
                z[q] *= scale
            g += k


@jit
def expected_counts_batch(
    buf, offsets, weights, trie, node_pid, scores, max_piece, alpha, ew, shift, n_pieces
):
    """Forward–backward expected piece counts, summed over texts with ``weights``.

    Forward: :func:`_forward_linear` when ``ew`` is given (non-empty), else :func:`_forward_log`
    (also the fallback when the linear pass underflows). Backward walks end positions downwards;
    the count of match ``(s, e)`` is ``c = exp(F[s] + α·v + G[e] − F[L])`` and
    ``G[s] = F[L] − F[s] + log Σ_{matches at s} c``: one ``exp`` per match, one ``log`` per
    position, no match list stored (memory ``O(L)``). Returns ``(counts, loglik)`` with
    ``loglik = Σ_t weights[t]·F_t[L]``; ``-inf`` if a text cannot be segmented.
    """
    n_texts = offsets.shape[0] - 1
    m = _max_len(offsets)
    counts = np.zeros(n_pieces)
    fwd = np.empty(m + 1)
    z = np.empty(m + 1)
    acc = np.empty(m + 1)
    linear = ew.shape[0] > 0
    loglik = 0.0
    for t in range(n_texts):
        a = offsets[t]
        n = offsets[t + 1] - a
        if linear:
            _forward_linear(buf, a, n, trie, node_pid, ew, shift, max_piece, fwd, z)
        if not linear or fwd[n] == NEG_INF:
            _forward_log(buf, a, n, trie, node_pid, scores, max_piece, alpha, fwd)
        logz = fwd[n]
        if logz == NEG_INF:
            return counts, NEG_INF
        for i in range(n + 1):
            acc[i] = 0.0
        wt = weights[t]
        for e in range(n, 0, -1):
            if e == n:
                g = 0.0
            elif acc[e] > 0.0 and fwd[e] > NEG_INF:
                g = logz - fwd[e] + np.log(acc[e])
            else:
                continue
            node = 0
            for j in range(e - 1, max(0, e - max_piece) - 1, -1):
                node = _child(node, np.int64(buf[a + j]), trie)
                if node < 0:
                    break
                pid = node_pid[node]
                if pid >= 0 and fwd[j] > NEG_INF:
                    c = np.exp(fwd[j] + alpha * scores[pid] + g - logz)
                    acc[j] += c
                    counts[pid] += wt * c
        loglik += wt * logz
    return counts, loglik


@jit
def viterbi_counts_batch(buf, offsets, weights, trie, node_pid, scores, max_piece):
    """Weighted piece counts of the Viterbi segmentations; returns ``(counts, total_score)``."""
    ids, out_off, status = viterbi_batch(
        buf, offsets, trie, node_pid, scores, max_piece
    )
    counts = np.zeros(scores.shape[0])
    total = 0.0
    if status >= 0:
        return counts, NEG_INF
    for t in range(offsets.shape[0] - 1):
        for i in range(out_off[t], out_off[t + 1]):
            counts[ids[i]] += weights[t]
            total += weights[t] * scores[ids[i]]
    return counts, total


@jit
def alternative_scores(pbuf, poffsets, trie, node_pid, scores, max_piece):
    """For each piece, the best score of segmenting its bytes into at least two pieces."""
    n_pieces = poffsets.shape[0] - 1
    out = np.full(n_pieces, NEG_INF)
    best = np.empty(max_piece + 1)
    for p in range(n_pieces):
        a = poffsets[p]
        n = poffsets[p + 1] - a
        best[0] = 0.0
        for e in range(1, n + 1):
            bb = NEG_INF
            node = 0
            for j in range(e - 1, max(0, e - max_piece) - 1, -1):
                node = _child(node, np.int64(pbuf[a + j]), trie)
                if node < 0:
                    break
                pid = node_pid[node]
                if pid >= 0 and not (j == 0 and e == n):
                    bb = max(bb, best[j] + scores[pid])
            best[e] = bb
        out[p] = best[n]
    return out
