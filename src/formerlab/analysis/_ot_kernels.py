"""Exact optimal transport for small dense problems: the transportation simplex, batched.

Imported only by :mod:`formerlab.analysis.transport`. With numba installed (extra ``fast``) the
kernels are compiled (``cache=True``); without it the very same functions run as plain Python
(correct, slow). The algorithm is the classical transportation simplex — the network simplex on a
complete bipartite graph (Dantzig 1951, the "u–v" method):

1. **Initial basis** by the row-minimum rule, rows served in decreasing "regret" (the gap
   between their two cheapest cells, a static form of Vogel's rule that costs one pass): each
   row ships to its cheapest open column. Every allocation crosses out exactly one line (the last
   one both), so the ``m + n − 1`` allocations form a spanning tree of the bipartite graph; zero
   allocations stay as degenerate basic cells. (Full Vogel starts closer to the optimum but costs
   more than the pivots it saves at these sizes.)
2. **Potentials** ``u_i + v_j = C_ij`` on the tree cells, kept as a rooted tree (parent cell,
   depth) so that a pivot only re-roots the subtree it cuts off.
3. **Pricing** with a candidate list: a full scan keeps each row's most negative reduced cost
   ``C_ij − u_i − v_j``; the following pivots re-price only these candidates (the most negative
   one enters) until none is negative, then scan again. A full scan with nothing below ``−tol``
   proves optimality, and ``(u, v)`` is then an optimal dual.
4. **Pivot**: the entering cell closes one cycle with the tree path between its row and column;
   flows alternate ``+θ / −θ`` around it, ``θ`` = the smallest flow on a ``−`` cell, which leaves.

Flows stay non-negative exactly (``x − θ ≥ 0`` in floating point when ``x ≥ θ``).

Uniform masses on two sets of the same size (WMD between equal-length sentences) are an
assignment problem: :func:`assignment` solves it by shortest augmenting paths instead.
"""

from __future__ import annotations

import numpy as np

try:  # the kernels are plain Python; numba only makes them fast
    import numba

    jit = numba.njit(cache=True, nogil=True)
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised when numba is absent
    def jit(fn):
        return fn

    HAVE_NUMBA = False

STATUS_OPTIMAL = 0
STATUS_MAX_ITER = 1


@jit
def regret_basis(a, b, C, bi, bj, x):
    """Row-minimum rule with rows served in decreasing regret (gap between their two cheapest
    cells); fills the ``m + n − 1`` basic cells ``(bi, bj, x)``."""
    m = a.shape[0]
    n = b.shape[0]
    regret = np.empty(m)
    for i in range(m):
        m1 = np.inf
        m2 = np.inf
        for j in range(n):
            c = C[i, j]
            if c < m1:
                m2 = m1
                m1 = c
            elif c < m2:
                m2 = c
        regret[i] = m1 - m2 if m2 < np.inf else 0.0
    order = np.argsort(regret)
    s = a.copy()
    d = b.copy()
    col_open = np.ones(n, np.bool_)
    rows_left = m
    cols_left = n
    r = 0
    for k in range(m + n - 1):
        i = order[r]
        j = -1
        best = np.inf
        for jj in range(n):
            if col_open[jj] and (j < 0 or C[i, jj] < best):
                best = C[i, jj]
                j = jj
        row_done = s[i] <= d[j]
        t = s[i] if row_done else d[j]
        bi[k] = i
        bj[k] = j
        x[k] = t
        s[i] -= t
        d[j] -= t
        if rows_left == 1 and cols_left == 1:
            break
        if (row_done and rows_left > 1) or cols_left == 1:
            rows_left -= 1
            r += 1
        else:
            col_open[j] = False
            cols_left -= 1


@jit
def _other(m, k, node, bi, bj):
    """The other end of basic cell ``k`` seen from ``node`` (rows ``0..m-1``, columns ``m+j``)."""
    return m + bj[k] if node < m else bi[k]


@jit
def _grow(root, m, C, bi, bj, adj, cnt, pot, v, parent, depth, queue):
    """Breadth-first from ``root`` (whose parent, depth, potential are set), away from its parent."""
    queue[0] = root
    head = 0
    tail = 1
    while head < tail:
        node = queue[head]
        head += 1
        for s in range(cnt[node]):
            k = adj[node, s]
            if k == parent[node]:
                continue
            o = _other(m, k, node, bi, bj)
            parent[o] = k
            depth[o] = depth[node] + 1
            pot[o] = C[bi[k], bj[k]] - pot[node]
            if o >= m:
                v[o - m] = pot[o]
            queue[tail] = o
            tail += 1


@jit
def _unlink(node, k, adj, cnt):
    for s in range(cnt[node]):
        if adj[node, s] == k:
            cnt[node] -= 1
            adj[node, s] = adj[node, cnt[node]]
            return


@jit
def transport_simplex(a, b, C, plan, u, v, max_iter, tol):
    """Solve ``min Σ C_ij P_ij`` s.t. ``P 1 = a``, ``Pᵀ 1 = b``, ``P ≥ 0`` (all ``a, b > 0``).

    Writes the plan into ``plan`` and an optimal dual into ``u``, ``v``.
    Returns ``(cost, pivots, status)``.
    """
    m = a.shape[0]
    n = b.shape[0]
    nb = m + n - 1
    nodes = m + n
    bi = np.empty(nb, np.int64)
    bj = np.empty(nb, np.int64)
    x = np.empty(nb, np.float64)
    regret_basis(a, b, C, bi, bj, x)
    adj = np.empty((nodes, max(m, n)), np.int64)
    cnt = np.zeros(nodes, np.int64)
    for k in range(nb):
        r = bi[k]
        c = m + bj[k]
        adj[r, cnt[r]] = k
        cnt[r] += 1
        adj[c, cnt[c]] = k
        cnt[c] += 1
    pot = np.empty(nodes)
    parent = np.empty(nodes, np.int64)
    depth = np.empty(nodes, np.int64)
    queue = np.empty(nodes, np.int64)
    parent[0] = -1
    depth[0] = 0
    pot[0] = 0.0
    _grow(0, m, C, bi, bj, adj, cnt, pot, v, parent, depth, queue)
    side_q = np.empty(nodes, np.int64)
    side_p = np.empty(nodes, np.int64)
    cand_i = np.empty(m, np.int64)
    cand_j = np.empty(m, np.int64)
    ncand = 0
    status = STATUS_MAX_ITER
    it = 0
    while it < max_iter:
        best = -tol
        p = -1
        q = -1
        kept = 0
        for c in range(ncand):  # re-price the candidates
            i = cand_i[c]
            j = cand_j[c]
            r = C[i, j] - pot[i] - v[j]
            if r < -tol:
                cand_i[kept] = i
                cand_j[kept] = j
                kept += 1
                if r < best:
                    best = r
                    p = i
                    q = j
        ncand = kept
        if p < 0:  # full scan: each row's most negative reduced cost
            ncand = 0
            for i in range(m):
                ui = pot[i]
                rb = -tol
                jb = -1
                for j in range(n):
                    r = C[i, j] - ui - v[j]
                    if r < rb:
                        rb = r
                        jb = j
                if jb >= 0:
                    cand_i[ncand] = i
                    cand_j[ncand] = jb
                    ncand += 1
                    if rb < best:
                        best = rb
                        p = i
                        q = jb
        if p < 0:
            status = STATUS_OPTIMAL
            break
        it += 1
        # the tree path between row p and column q, walked up from both ends
        x1 = p
        x2 = m + q
        n1 = 0
        n2 = 0
        while depth[x1] > depth[x2]:
            k = parent[x1]
            side_p[n1] = k
            n1 += 1
            x1 = _other(m, k, x1, bi, bj)
        while depth[x2] > depth[x1]:
            k = parent[x2]
            side_q[n2] = k
            n2 += 1
            x2 = _other(m, k, x2, bi, bj)
        while x1 != x2:
            k = parent[x1]
            side_p[n1] = k
            n1 += 1
            x1 = _other(m, k, x1, bi, bj)
            k = parent[x2]
            side_q[n2] = k
            n2 += 1
            x2 = _other(m, k, x2, bi, bj)
        # the cycle from column q: side_q in order, then side_p reversed; even positions lose flow
        theta = np.inf
        leave = -1
        cut_q_side = True
        length = n1 + n2
        for t in range(0, length, 2):
            k = side_q[t] if t < n2 else side_p[length - 1 - t]
            if x[k] < theta:
                theta = x[k]
                leave = k
                cut_q_side = t < n2
        for t in range(length):
            k = side_q[t] if t < n2 else side_p[length - 1 - t]
            if t % 2 == 0:
                x[k] -= theta
            else:
                x[k] += theta
        _unlink(bi[leave], leave, adj, cnt)
        _unlink(m + bj[leave], leave, adj, cnt)
        bi[leave] = p
        bj[leave] = q
        x[leave] = theta
        adj[p, cnt[p]] = leave
        cnt[p] += 1
        adj[m + q, cnt[m + q]] = leave
        cnt[m + q] += 1
        # re-root the cut-off subtree at the entering cell's end inside it
        w = m + q if cut_q_side else p
        o = p if cut_q_side else m + q
        parent[w] = leave
        depth[w] = depth[o] + 1
        pot[w] = C[p, q] - pot[o]
        if w >= m:
            v[w - m] = pot[w]
        _grow(w, m, C, bi, bj, adj, cnt, pot, v, parent, depth, queue)
    for i in range(m):
        u[i] = pot[i]
        for j in range(n):
            plan[i, j] = 0.0
    cost = 0.0
    for k in range(nb):
        plan[bi[k], bj[k]] += x[k]
        cost += x[k] * C[bi[k], bj[k]]
    return cost, it, status


@jit
def _augmenting_row_reduction(C, v, col4row, row4col):
    """Jonker–Volgenant's augmenting row reduction (two passes over the free rows).

    A free row takes its cheapest column (reduced cost ``C_ij − v_j``) and lowers that column's
    ``v`` by the gap to its second cheapest, displacing the previous owner, which is served next.
    ``v`` only decreases, so every reduced cost stays ``≥ 0`` and matched pairs stay tight
    (with ``u_i = C_i,c(i) − v_c(i)``).
    """
    n = C.shape[0]
    free = np.empty(n, np.int64)
    nfree = 0
    for i in range(n):
        if col4row[i] < 0:
            free[nfree] = i
            nfree += 1
    budget = 4 * n * n  # guards against long displacement chains on ties
    for _ in range(2):
        k = 0
        prev = nfree
        nfree = 0
        while k < prev and budget > 0:
            budget -= 1
            i = free[k]
            k += 1
            u1 = np.inf
            u2 = np.inf
            j1 = 0
            j2 = -1
            for j in range(n):
                h = C[i, j] - v[j]
                if h < u2:
                    if h >= u1:
                        u2 = h
                        j2 = j
                    else:
                        u2 = u1
                        j2 = j1
                        u1 = h
                        j1 = j
            i0 = row4col[j1]
            if u1 < u2:
                v[j1] -= u2 - u1
            elif i0 >= 0 and j2 >= 0:
                j1 = j2
                i0 = row4col[j1]
            if i0 >= 0:
                col4row[i0] = -1
            col4row[i] = j1
            row4col[j1] = i
            if i0 >= 0:
                if u1 < u2:
                    k -= 1
                    free[k] = i0
                else:
                    free[nfree] = i0
                    nfree += 1
        while k < prev:  # budget exhausted: keep the rest free for augmentation
            free[nfree] = free[k]
            nfree += 1
            k += 1


@jit
def assignment(C, plan, u, v, mass):
    """Uniform masses on equal sizes: the LP optimum is a permutation (Birkhoff–von Neumann),
    found by shortest augmenting paths with potentials (Jonker–Volgenant; the scheme of
    ``scipy.optimize.linear_sum_assignment``, Crouse 2016). Writes ``plan = mass·P`` and the
    dual ``(u, v)`` (``u_i + v_j ≤ C_ij``, tight on the permutation); returns the cost."""
    n = C.shape[0]
    col4row = np.full(n, -1, np.int64)
    row4col = np.full(n, -1, np.int64)
    # column reduction: v_j = min_i C_ij (dual feasible with u = 0); a column's cheapest row
    # takes it when that row is still free (a tight pair), the rest go through augmentation
    for j in range(n):
        best = 0
        for i in range(1, n):
            if C[i, j] < C[best, j]:
                best = i
        v[j] = C[best, j]
        if col4row[best] < 0:
            col4row[best] = j
            row4col[j] = best
    _augmenting_row_reduction(C, v, col4row, row4col)
    for i in range(n):  # u: tight on matched pairs, 0 on free rows (C_ij − v_j ≥ 0 for all)
        u[i] = C[i, col4row[i]] - v[col4row[i]] if col4row[i] >= 0 else 0.0
    shortest = np.empty(n)
    path = np.empty(n, np.int64)
    remaining = np.empty(n, np.int64)
    seen_row = np.empty(n, np.bool_)
    seen_col = np.empty(n, np.bool_)
    for cur in range(n):
        if col4row[cur] >= 0:
            continue
        for j in range(n):
            shortest[j] = np.inf
            path[j] = -1
            remaining[j] = n - 1 - j
            seen_row[j] = False
            seen_col[j] = False
        left = n
        min_val = 0.0
        i = cur
        sink = -1
        while sink < 0:
            seen_row[i] = True
            lowest = np.inf
            index = -1
            ui = u[i]
            for it in range(left):
                j = remaining[it]
                r = min_val + C[i, j] - ui - v[j]
                if r < shortest[j]:
                    path[j] = i
                    shortest[j] = r
                if shortest[j] < lowest or (shortest[j] == lowest and row4col[j] < 0):
                    lowest = shortest[j]
                    index = it
            min_val = lowest
            j = remaining[index]
            if row4col[j] < 0:
                sink = j
            else:
                i = row4col[j]
            seen_col[j] = True
            left -= 1
            remaining[index] = remaining[left]
        u[cur] += min_val
        for r in range(n):
            if seen_row[r] and r != cur:
                u[r] += min_val - shortest[col4row[r]]
        for c in range(n):
            if seen_col[c]:
                v[c] -= min_val - shortest[c]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            nxt = col4row[i]
            col4row[i] = j
            j = nxt
            if i == cur:
                break
    cost = 0.0
    for i in range(n):
        for j in range(n):
            plan[i, j] = 0.0
        plan[i, col4row[i]] = mass
        cost += mass * C[i, col4row[i]]
    return cost


@jit
def _uniform(w):
    for k in range(1, w.shape[0]):
        if w[k] != w[0]:
            return False
    return True


@jit
def _solve_one(a, b, C, plan, u, v, max_iter, rtol):
    """One problem with all masses positive (``b`` already rescaled to ``a``'s mass)."""
    m, n = C.shape
    if m == n and _uniform(a) and _uniform(b):
        return assignment(C, plan, u, v, a[0]), 0, STATUS_OPTIMAL
    scale = 0.0
    for i in range(m):
        for j in range(n):
            scale = max(scale, abs(C[i, j]))
    return transport_simplex(a, b, C, plan, u, v, max_iter, rtol * max(scale, 1e-300))


@jit
def emd_batch(A, B, Cs, plans, us, vs, costs, iters, status, max_iter, rtol):
    """Solve the problems ``(A[t], B[t], Cs[t])``; zero-mass rows and columns are dropped.

    ``B[t]`` is rescaled to the mass of ``A[t]``. The dual of a zero-mass row (column) is set to
    ``min_j (C_ij − v_j)`` (``min_i (C_ij − u_i)``): the dual stays feasible and equals the
    marginal cost of moving a little mass there.
    """
    batch, m_all, n_all = Cs.shape
    for t in range(batch):
        rows = np.nonzero(A[t] > 0)[0]
        cols = np.nonzero(B[t] > 0)[0]
        m = rows.shape[0]
        n = cols.shape[0]
        if m == m_all and n == n_all:  # no padding: solve in place
            b = B[t] * (A[t].sum() / B[t].sum())
            cost, it, st = _solve_one(A[t], b, Cs[t], plans[t], us[t], vs[t], max_iter, rtol)
            costs[t], iters[t], status[t] = cost, it, st
            continue
        a = np.empty(m)
        b = np.empty(n)
        for i in range(m):
            a[i] = A[t, rows[i]]
        for j in range(n):
            b[j] = B[t, cols[j]]
        b *= a.sum() / b.sum()
        C = np.empty((m, n))
        for i in range(m):
            for j in range(n):
                C[i, j] = Cs[t, rows[i], cols[j]]
        plan = np.empty((m, n))
        u = np.empty(m)
        v = np.empty(n)
        cost, it, st = _solve_one(a, b, C, plan, u, v, max_iter, rtol)
        costs[t], iters[t], status[t] = cost, it, st
        plans[t] = 0.0
        for i in range(m):
            us[t, rows[i]] = u[i]
            for j in range(n):
                plans[t, rows[i], cols[j]] = plan[i, j]
        for j in range(n):
            vs[t, cols[j]] = v[j]
        for i in range(m_all):
            if not A[t, i] > 0:
                best = np.inf
                for j in range(n):
                    best = min(best, Cs[t, i, cols[j]] - v[j])
                us[t, i] = best
        for j in range(n_all):
            if not B[t, j] > 0:
                best = np.inf
                for i in range(m):
                    best = min(best, Cs[t, rows[i], j] - u[i])
                vs[t, j] = best
