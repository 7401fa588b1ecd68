"""The codes of an index ranked for queries (faiss' `IndexPQ::search`): every distance, the top-k
chunk by chunk, or fast-scan candidates re-ranked exactly, with what it derives from the codes kept
between calls."""

import collections

import numpy as np

from gpq_keras.config import check_positive_int
from gpq_keras.retrieval import faiss_bridge, fast_scan
from gpq_keras.retrieval.codes import unique_codes
from gpq_keras.retrieval.kernels import (
    CHUNK_ELEMENTS,
    DB_BLOCK,
    blockwise_top_k,
    decode_distances,
    key_positions,
    onehot_blocks,
    onehot_codes,
    ranked_keys,
    table_distances,
)
from gpq_keras.retrieval.quantizer import as_matrix

ONEHOT_CACHE_BYTES = 256 << 20  # the largest one-hot code matrix kept between searches
TOP_K_QUERIES = 4096  # queries per pass over a large database for a top-k

RankedChunk = collections.namedtuple("RankedChunk", ["start", "positions", "distances"])
RankedChunk.__doc__ = """Ranked results of queries start .. start + len(positions) - 1: database
positions (insertion order) int (chunk, k) best first, and their distances float32 (chunk, k) or
None."""


class CodeRanking:
    """Codes uint8 (N, M) of a `ProductQuantizer` ranked for queries, by position.

    What it derives from the codes is made on first use and kept: `distinct` (the distinct codes and
    each item's, or all codes and None), `onehot` (their one-hot matrix, when it takes at most
    `ONEHOT_CACHE_BYTES`) and `fast_scan_index` (faiss' `IndexPQFastScan`). An index whose codes
    change makes a new one.
    """

    def __init__(self, pq, codes):
        self.pq, self.codes = pq, codes
        self.distinct = None
        self.onehot = None
        self.fast_scan_index = None

    @property
    def ntotal(self):
        return int(self.codes.shape[0])

    def _distinct(self):
        if self.distinct is None:
            unique = unique_codes(self.codes, self.pq.nbits)
            self.distinct = (self.codes, None) if unique is None else unique
        return self.distinct

    def _onehot_blocks(self, codes):
        """One-hot blocks (M*K, n) of the codes to rank: one, kept, when it takes at most
        `ONEHOT_CACHE_BYTES`, else blocks of `DB_BLOCK` codes made on demand."""
        num_codewords = self.pq.num_codewords
        if codes.shape[0] * self.pq.num_subspaces * num_codewords * 4 > ONEHOT_CACHE_BYTES:
            return onehot_blocks(codes, num_codewords)
        if self.onehot is None:
            self.onehot = [onehot_codes(codes, num_codewords)]
        return self.onehot

    def iter_distances(self, queries, chunk_size=None):
        """Yield (start, distances (chunk, N) float32) over chunks of queries (Q, M*d); the array is
        a buffer the next chunk reuses. Each distinct code's distance is computed once."""
        queries = as_matrix("queries", queries, self.pq.dim)
        codes, inverse = self._distinct()
        blocks = self._onehot_blocks(codes)
        if chunk_size is None:
            chunk_size = max(1, CHUNK_ELEMENTS // max(1, self.ntotal))
        chunk_size = check_positive_int("chunk_size", chunk_size)
        buffer = np.empty((min(chunk_size, len(queries)), codes.shape[0]), np.float32)
        expanded = None if inverse is None else np.empty((len(buffer), self.ntotal), np.float32)
        for start in range(0, queries.shape[0], chunk_size):
            tables = self.pq.lookup_tables(queries[start : start + chunk_size])
            dist = table_distances(tables, blocks, buffer[: len(tables)])
            if inverse is not None:
                dist = np.take(dist, inverse, axis=1, out=expanded[: len(tables)])
            yield start, dist

    def rank(self, queries, k, chunk_size=None, with_distances=True):
        """Yield `RankedChunk`s of the top-k, k in [1, N], of queries (Q, M*d) (see `PQIndex.rank`):
        block by block for a top-k (4k < N) of more than `DB_BLOCK` items, else by the full
        distances of query chunks."""
        if 4 * k < self.ntotal and self.ntotal > DB_BLOCK:  # a top-k of a large database
            queries = as_matrix("queries", queries, self.pq.dim)
            step = (
                TOP_K_QUERIES
                if chunk_size is None
                else check_positive_int("chunk_size", chunk_size)
            )
            for start in range(0, queries.shape[0], step):
                keys = blockwise_top_k(
                    self.pq.lookup_tables(queries[start : start + step]), self.codes, k
                )
                distances = decode_distances(keys) if with_distances else None
                yield RankedChunk(start, key_positions(keys), distances)
            return
        buffer = None
        for start, dist in self.iter_distances(queries, chunk_size):
            if buffer is None:
                buffer = np.empty(dist.shape, np.int64)
            keys = ranked_keys(dist, k, out=buffer)  # k = N: `buffer` itself, sorted
            distances = decode_distances(keys) if with_distances else None
            yield RankedChunk(start, key_positions(keys), distances)

    def fast_scan(self, queries, k, exact=True):
        """Top-k (distances float32 (Q, k), positions int64 (Q, k), -1 for none) of queries (Q, M*d)
        by faiss' 4-bit fast-scan (K=16): its candidates re-ranked exactly (`fast_scan.rerank`), or
        (`exact=False`) its results as they are, distances from 8-bit look-up tables."""
        if self.fast_scan_index is None:
            self.fast_scan_index = faiss_bridge.fast_scan_index(self.pq, self.codes)
        index, num_subspaces = self.fast_scan_index, self.pq.num_subspaces
        prepared = self.pq.prepare_queries(queries)
        if not exact:
            similarities, positions = index.search(prepared, k)
            return faiss_bridge.to_distances(similarities, num_subspaces), positions
        search = faiss_bridge.fast_scan_search(index, num_subspaces)
        return fast_scan.rerank(search, prepared, self.pq.lookup_tables(queries), self.codes, k)
