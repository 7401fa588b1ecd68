"""Exact search from 4-bit fast-scan candidates (faiss' `IndexRefine.h`): the error bound of
fast-scan distances and the exact re-rank that uses it.

No faiss here: the fast-scan search is a function given by the caller (`faiss_bridge`).
"""

import numpy as np

from gpq_keras.retrieval import kernels


def fast_scan_error_bound(tables):
    """The largest error of faiss' 4-bit fast-scan distances for each query, from its tables
    (Q, M, K) -> float64 (Q,).

    Fast-scan adds look-up tables quantised to 8 bits: faiss
    (`quantize_lut::round_uint8_per_column`) subtracts each sub-space's minimum and rounds T * a to
    an integer, a = 255 / (largest span of a sub-space's table), so each of the M added entries is
    off by at most 1 / (2a) and a distance by at most M * span / 510. The bound adds 0.1 % and a
    float32 rounding margin (faiss computes its own tables and decodes b + sum / a in float32).
    """
    tables = np.asarray(tables, np.float64)
    num_subspaces = tables.shape[1]
    span = (tables.max(axis=2) - tables.min(axis=2)).max(axis=1)
    scale = np.abs(tables).max(axis=(1, 2)) + 1.0
    return (
        num_subspaces * span / 510.0 * 1.001 + 64 * num_subspaces * np.finfo(np.float32).eps * scale
    )


def rerank(search, queries, tables, codes, k):
    """Exact top-k (distances float32 (Q, k), positions int64 (Q, k)) of fast-scan candidates, equal
    to brute force, ties (by position) included.

    Args:
        search: `search(queries, n)` -> (approximate distances float64 (q, n), positions int64
            (q, n), -1 for none): the fast-scan search of rows of `queries`.
        queries: the queries `search` takes (Q, M*d).
        tables: their look-up tables (Q, M, K) (`ProductQuantizer.lookup_tables`).
        codes: the database's codes uint8 (N, M), in position order.
        k: int in [1, N].

    Each query fetches `fetch` candidates (first 2k + 32) by their approximate distances a and
    re-ranks them by exact distance. With e the error bound of its tables (`fast_scan_error_bound`),
    an item not fetched has a >= a_max (the largest fetched), so exact distance >= a_max - e; when
    that exceeds the k-th exact distance D_k, no item outside can beat or tie any result, and the
    top-k equals brute force, ties included. Queries where it does not hold fetch 4 times more, and
    fall back to brute force (`kernels.blockwise_top_k`) once that would be the whole database.
    """
    ntotal = codes.shape[0]
    bound = fast_scan_error_bound(tables)
    dist = np.empty((len(queries), k), np.float32)
    positions = np.empty((len(queries), k), np.int64)
    pending = np.arange(len(queries))
    fetch = 2 * k + 32
    while len(pending) and fetch < ntotal:
        approx, found = search(queries[pending], fetch)
        usable = (found >= 0).all(axis=1) & np.isfinite(approx).all(axis=1)
        found = np.where(found >= 0, found, 0)
        exact_dist = kernels.gathered_distances(tables[pending], codes[found])
        keys = kernels.smallest_k(kernels.sort_keys(exact_dist, positions=found), k)
        kth = kernels.decode_distances(keys[:, -1:])[:, 0].astype(np.float64)
        done = usable & (approx.max(axis=1) - bound[pending] > kth)
        dist[pending[done]] = kernels.decode_distances(keys[done])
        positions[pending[done]] = kernels.key_positions(keys[done])
        pending = pending[~done]
        fetch *= 4
    if len(pending):
        keys = kernels.blockwise_top_k(tables[pending], codes, k)
        dist[pending] = kernels.decode_distances(keys)
        positions[pending] = kernels.key_positions(keys)
    return dist, positions
