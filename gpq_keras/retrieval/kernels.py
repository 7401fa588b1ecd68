"""Ranking kernels (faiss' `impl/code_distance/` and `impl/ResultHandler.h`): pure functions of
look-up tables, codes and k.

Tables are T (Q, M, K) (`ProductQuantizer.lookup_tables`), codes uint8 (N, M). A result is a sort
key (`sort_keys`): an int64 that orders like (float32 distance, database position), so one integer
sort ranks by distance with ties by position, and both halves decode back (`decode_distances`,
`key_positions`). Block and chunk sizes are arguments; the defaults bound a call's buffers.
"""

import numpy as np

from gpq_keras.parallel import map_rows

# Query chunk x database elements per block: 32 MB of distances and 64 MB of sort keys, in buffers
# reused from chunk to chunk (fresh large arrays would be page-faulted in anew each time).
CHUNK_ELEMENTS = 1 << 23
DB_BLOCK = 1 << 16  # database items per block of one-hot codes


def sort_keys(distances, out=None, offset=0, positions=None):
    """int64 keys that sort like (distance, position) -> (Q, N).

    The high 32 bits hold the float32 distance as a two's-complement int of the same order (its
    sign-magnitude bits, so -0.0 and +0.0 are one value); the low 32 bits hold the position: the
    column index plus `offset`, or `positions` (Q, N) non-negative ints when given.
    `out`: a C-contiguous int64 array of the same shape to fill.
    """
    if not np.little_endian:  # pragma: no cover
        raise RuntimeError("sort_keys needs a little-endian machine")
    distances = np.ascontiguousarray(distances, np.float32)
    if distances.ndim != 2:
        raise ValueError(f"`distances` must have shape (Q, N). Received shape: {distances.shape}")
    keys = np.empty(distances.shape, np.int64) if out is None else out
    if keys.shape != distances.shape or keys.dtype != np.int64 or not keys.flags.c_contiguous:
        raise ValueError(f"`out` must be a C-contiguous int64 array of shape {distances.shape}")
    halves = keys.view(np.int32).reshape(distances.shape + (2,))  # little-endian: (low, high)
    bits = distances.view(np.int32)
    sign, high = halves[..., 0], halves[..., 1]  # the low half holds the sign until `low` goes in
    np.right_shift(bits, 31, out=sign)  # 0 or -1
    np.bitwise_and(bits, np.int32(0x7FFFFFFF), out=high)
    high ^= sign
    high -= sign  # conditional negation: -magnitude for negative distances
    if positions is None:
        halves[..., 0] = np.arange(offset, offset + distances.shape[1], dtype=np.int32)
    else:
        halves[..., 0] = positions
    return keys


def decode_distances(keys):
    """The float32 distances of `sort_keys` keys (their high halves) -> (Q, N)."""
    high = (keys >> 32).astype(np.int32)
    bits = np.abs(high) | (high & np.int32(-0x80000000))
    return bits.view(np.float32)


def key_positions(keys):
    """The positions of `sort_keys` keys (Q, N) (their low halves), an int32 view (Q, N)."""
    return keys.view(np.int32)[:, 0::2]


def smallest_k(keys, k):
    """The k smallest keys of each row, sorted ascending -> (rows, k). Reorders `keys` in place."""
    if k >= keys.shape[1]:
        keys.sort(axis=1)
        return keys
    keys.partition(k - 1, axis=1)
    part = keys[:, :k].copy()
    part.sort(axis=1)
    return part


def ranked_keys(distances, k, out=None):
    """The k best keys of each row of distances (Q, N), sorted -> int64 (Q, k), rows in parallel.

    `out`: an int64 buffer of at least Q rows of N to fill with the keys; for k = N the result is
    `out[:Q]` itself, sorted in place (no copy).
    """
    keys = np.empty(distances.shape, np.int64) if out is None else out[: len(distances)]

    def rank_rows(rows):
        return smallest_k(sort_keys(distances[rows], out=keys[rows]), k)

    ranked = map_rows(rank_rows, len(distances))
    return keys if k >= distances.shape[1] else np.concatenate(ranked)


def onehot_codes(codes, num_codewords):
    """uint8 codes (n, M) -> transposed one-hot float32 (M*K, n), a 1 in row m*K + code_m of each
    column."""
    n, num_subspaces = codes.shape
    out = np.zeros((num_subspaces * num_codewords, n), np.float32)
    rows = (
        codes.T.astype(np.intp) + (np.arange(num_subspaces, dtype=np.intp) * num_codewords)[:, None]
    )
    np.put_along_axis(out, rows, np.float32(1.0), axis=0)
    return out


def onehot_blocks(codes, num_codewords, block_size=DB_BLOCK):
    """The one-hot blocks (M*K, <= block_size) of codes (n, M), each made when called: a list of
    functions for `table_distances`."""
    return [
        lambda s=s: onehot_codes(codes[s : s + block_size], num_codewords)
        for s in range(0, codes.shape[0], block_size)
    ]


def table_distances(tables, onehot_blocks, out):
    """out = T (Q, M*K) @ onehot (M*K, n), i.e. sum_m T[q, m, code_m] for each code, block by block.

    `onehot_blocks`: arrays (M*K, n_b) or functions that make them, in database order; `out`:
    float32 (Q, sum n_b). One matrix product over exact 0/1 weights: each distance is a float32 sum
    of the M table entries of its code. The summation order is the BLAS's, so the last bit may
    depend on the batch shape; equal codes in one call get equal distances when each distinct code
    is computed once.
    """
    flat = tables.reshape(tables.shape[0], -1)
    start = 0
    for block in onehot_blocks:
        oh = block() if callable(block) else block
        np.matmul(flat, oh, out=out[:, start : start + oh.shape[1]])
        start += oh.shape[1]
    return out


def gathered_distances(tables, codes):
    """sum_m T[q, m, codes[q, c, m]] for tables (Q, M, K) and each query's candidate codes (Q, C, M)
    -> float32 (Q, C), summed m = 0, 1, ... in float32, the order of `table_distances`' product."""
    out = np.zeros(codes.shape[:2], np.float32)
    for m in range(tables.shape[1]):
        out += np.take_along_axis(tables[:, m, :], codes[:, :, m].astype(np.intp), axis=1)
    return out


def blockwise_top_k(tables, codes, k, block_size=DB_BLOCK, chunk_elements=CHUNK_ELEMENTS):
    """Exact top-k keys (`sort_keys` of (distance, position)), sorted, of tables (Q, M, K) over
    codes (N, M) -> int64 (Q, k), k <= N.

    Blocks of `block_size` codes outside, queries inside: each block's one-hot codes are made once
    (`onehot_codes`) and every query keeps a running top-k, so the cost is linear in N and memory is
    a block's: distances and keys of chunks of about `chunk_elements` (queries x block items).
    """
    num_queries, _, num_codewords = tables.shape
    tables = tables.reshape(num_queries, -1)
    ntotal = codes.shape[0]
    width = min(block_size, ntotal)
    step = max(1, min(num_queries, chunk_elements // width))
    best = np.full((num_queries, k), np.iinfo(np.int64).max, np.int64)
    dist_buffer = np.empty(step * width, np.float32)
    key_buffer = np.empty(step * width, np.int64)
    for start in range(0, ntotal, block_size):
        onehot = onehot_codes(codes[start : start + block_size], num_codewords)
        for first in range(0, num_queries, step):
            chunk = tables[first : first + step]
            shape = (chunk.shape[0], onehot.shape[1])
            dist = np.matmul(chunk, onehot, out=dist_buffer[: shape[0] * shape[1]].reshape(shape))
            keys = key_buffer[: shape[0] * shape[1]].reshape(shape)

            def merge(rows, dist=dist, keys=keys, first=first, start=start):
                block = sort_keys(dist[rows], out=keys[rows], offset=start)
                if k < block.shape[1]:
                    block.partition(k - 1, axis=1)
                    block = block[:, :k]
                rows = slice(first + rows.start, first + rows.stop)
                merged = np.concatenate([best[rows], block], axis=1)
                merged.partition(k - 1, axis=1)
                best[rows] = merged[:, :k]

            map_rows(merge, shape[0])
    best.sort(axis=1)
    return best
