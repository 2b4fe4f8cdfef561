"""Building the double-array reversed trie used by the numba lattice kernels (:mod:`._kernels`).

The trie holds every piece *reversed*, so walking it from an end position visits the matches
ending there from the shortest to the longest (kexue.fm/archives/9752 uses an Aho–Corasick
automaton instead; the reversed trie gives the same matches with a simpler, compact structure).
Double array (Aoe 1989): the child of position ``p`` along byte ``c`` is ``t = base[p] + c`` when
``check[t] == p``. Imported only when numba is installed.
"""

from __future__ import annotations

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)
_MAX_TRIES = 32


@jit
def _find_free(parent, i):
    """Smallest free cell ``>= i`` (union-find with path compression)."""
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@jit
def build_trie(rbuf, roffsets, ids):
    """Double-array (base/check) trie of the *reversed* pieces, given sorted.

    ``rbuf[roffsets[k]:roffsets[k+1]]`` is the k-th reversed piece in lexicographic order and
    ``ids[k]`` its piece index. Sorted input makes the pointer trie a single pass: a key shares
    its first ``lcp`` nodes with the previous key and appends the rest as last children. Then
    breadth-first placement gives each node a ``base ≥ 1`` whose slots ``base + label`` are free
    for all its children. Returns ``(trie, pid, duplicate)``: ``trie`` interleaves base and check,
    ``pid[pos] ≥ 0`` marks a piece end, ``duplicate`` is a repeated piece index or -1.
    """
    n_pieces = roffsets.shape[0] - 1
    n_max = roffsets[n_pieces] + 1
    first_child = np.full(n_max, -1, np.int64)
    last_child = np.full(n_max, -1, np.int64)
    next_sibling = np.full(n_max, -1, np.int64)
    label = np.zeros(n_max, np.int64)
    node_pid = np.full(n_max, -1, np.int32)
    path = np.zeros(n_max, np.int64)  # path[d] = node at depth d of the previous key
    prev_a, prev_len = 0, 0
    n_nodes = 1
    duplicate = -1
    for k in range(n_pieces):
        a = roffsets[k]
        n = roffsets[k + 1] - a
        lcp = 0
        while lcp < n and lcp < prev_len and rbuf[a + lcp] == rbuf[prev_a + lcp]:
            lcp += 1
        node = path[lcp]
        for d in range(lcp, n):
            nxt = n_nodes
            n_nodes += 1
            label[nxt] = rbuf[a + d]
            if first_child[node] < 0:
                first_child[node] = nxt
            else:
                next_sibling[last_child[node]] = nxt
            last_child[node] = nxt
            node = nxt
            path[d + 1] = node
        if node_pid[node] >= 0 and duplicate < 0:
            duplicate = ids[k]
        node_pid[node] = ids[k]
        prev_a, prev_len = a, n
    cap = 2 * n_nodes + 512
    base = np.zeros(cap, np.int64)
    check = np.full(cap, -1, np.int64)
    pid = np.full(cap, -1, np.int32)
    # "next free cell" union-find: parent[i] == i for free cells; used (or given up) cells point
    # right. Candidate bases are tried only at free cells; a placement that needed more than
    # _MAX_TRIES attempts gives up that many leading free cells, so the search is amortised O(1).
    parent = np.arange(cap + 1, dtype=np.int64)
    pos_of = np.zeros(n_nodes, np.int64)
    check[0] = -2  # the root: never anybody's child
    parent[0] = 1
    queue = np.empty(n_nodes, np.int64)
    queue[0] = 0
    head, tail = 0, 1
    size = 1
    kids = np.empty(256, np.int64)
    while head < tail:
        node = queue[head]
        head += 1
        pos = pos_of[node]
        pid[pos] = node_pid[node]
        k = 0
        c = first_child[node]
        while c >= 0:
            kids[k] = c
            k += 1
            c = next_sibling[c]
        if k == 0:
            continue
        lo = 256
        for i in range(k):
            lo = min(lo, label[kids[i]])
        cell = _find_free(parent, 1)
        tries = 0
        while True:
            b = cell - lo
            if b + 257 >= cap:  # grow the arrays
                new_cap = 2 * cap
                base2 = np.zeros(new_cap, np.int64)
                check2 = np.full(new_cap, -1, np.int64)
                pid2 = np.full(new_cap, -1, np.int32)
                parent2 = np.arange(new_cap + 1, dtype=np.int64)
                base2[:cap] = base
                check2[:cap] = check
                pid2[:cap] = pid
                parent2[:cap] = parent[:cap]
                base, check, pid, parent, cap = base2, check2, pid2, parent2, new_cap
            ok = b >= 1
            if ok:
                for i in range(k):
                    if check[b + label[kids[i]]] != -1:
                        ok = False
                        break
            if ok:
                break
            tries += 1
            cell = _find_free(parent, cell + 1)
        for _ in range(tries - _MAX_TRIES):  # give up the free cells that keep failing
            first = _find_free(parent, 1)
            parent[first] = first + 1
        base[pos] = b
        for i in range(k):
            t = b + label[kids[i]]
            check[t] = pos
            parent[t] = t + 1
            pos_of[kids[i]] = t
            size = max(size, t + 1)
            queue[tail] = kids[i]
            tail += 1
    size += 256  # room for base + byte of any position
    trie = np.empty(2 * size, np.int32)
    for i in range(size):
        trie[2 * i] = base[i]
        trie[2 * i + 1] = check[i]
    return trie, pid[:size].copy(), duplicate
