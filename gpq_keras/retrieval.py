"""Product-quantisation codes and asymmetric search with a learned GPQ codebook (NumPy, faiss export).

Shapes: N = database items, Q = queries, M = `num_subspaces` (codebooks), K = `num_codewords` per
codebook, d = `subspace_dim`, D = M * d the feature length. A code is one codeword index per codebook,
stored as uint8 (N, M) and packable to M * log2(K) bits.

Two retrieval modes (`gpq_keras.config.RETRIEVAL_MODES`):

- `"original"`, exactly what the original release does (`utils/RetrievalTest.py`): a database feature
  is coded with the codeword of the largest dot product between its raw sub-vector and the
  intra-normalised raw codebook Z; the distance of a raw, un-normalised query q to an item is
  sum_m (1 - q_m . Z_m[code_m]) with the raw Z.
- `"consistent"`, with the codebook training quantises with, Z' = SA(intra_norm(C), Z) (intra-normalised),
  intra-normalised queries and the same distance sum_m (1 - q_m . Z'_m[code_m]).

In both modes codes are assigned against the intra-normalised codebook: the modes differ in the codebook
given (Z or Z') and in how queries are treated.

`ProductQuantizer` is the codebook side (codes, look-up tables; faiss' `pq`), `PQIndex` the database of
codes that ranks items for queries (`search`, or `rank` chunk by chunk for evaluation with
`gpq_keras.metrics.evaluate_ranking`).

Ranking is by ascending distance; ties are broken by database position (insertion order), lower first,
so results are deterministic. (The original used NumPy's unstable `argsort`, whose order among equal
distances is unspecified.) Each distinct code's distance is computed once per query, so items with equal
codes always get bit-identical distances and tie; the float32 sum itself comes from one matrix product
(look-up tables x one-hot codes), whose last bit may depend on the BLAS and the batch shape.
"""

import collections
import collections.abc
import hashlib
import math
import os
import warnings

import numpy as np

from gpq_keras.config import (
    L2_EPSILON,
    RETRIEVAL_MODES,
    check_mode,
    check_num_codewords,
    check_positive_int,
)
from gpq_keras.files import FileFormatError, atomic_path, read_npz
from gpq_keras.parallel import map_rows

FORMAT_VERSION = (
    3  # 2: nbits, model fingerprint and checksum; 3: sources, class_names; 1 and 2 still load
)
_FORMAT_NAME = "gpq_keras.PQIndex"
# Query chunk x database elements per block: 32 MB of distances and 64 MB of sort keys, in buffers
# reused from chunk to chunk (fresh large arrays would be page-faulted in anew each time).
_CHUNK_ELEMENTS = 1 << 23
_ONEHOT_CACHE_BYTES = 256 << 20
_DB_BLOCK = 1 << 16
_MAX_ITEMS = 2**30  # positions must fit the low 32 bits of a sort key
_TRAIN_PER_LIST = 64  # coarse k-means training vectors per inverted list (faiss warns below 39)
_TOP_K_QUERIES = 4096  # queries per pass over a large database for a top-k
SEARCH_BACKENDS = ("auto", "numpy", "faiss")

RankedChunk = collections.namedtuple("RankedChunk", ["start", "positions", "distances"])
RankedChunk.__doc__ = """Ranked results of queries start .. start + len(positions) - 1: database positions
(insertion order) int (chunk, k) best first, and their distances float32 (chunk, k) or None."""


def import_faiss():
    """The `faiss` module, or an ImportError that says how to install it (the `[faiss]` extra)."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "faiss is not installed: pip install 'gpq-keras[faiss]' (faiss-cpu), "
            "or faiss-gpu on a machine with CUDA"
        ) from None
    return faiss


# --- checks ---------------------------------------------------------------------------------------


def _as_matrix(name, x, dim=None):
    """A finite float32 (N, dim) array; a clear error otherwise."""
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"`{name}` must have shape {want}. Received shape: {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"`{name}` must be numeric. Received dtype: {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return x


def _split(x, num_subspaces):
    """(N, M*d) -> (N, M, d)."""
    return x.reshape(x.shape[0], num_subspaces, x.shape[1] // num_subspaces)


def intra_normalize_np(x, num_subspaces):
    """L2-normalise each of the M sub-vectors of x (N, M*d) separately -> float32 (N, M*d).

    The NumPy twin of `gpq_keras.layers.intra_normalize` (the same `L2_EPSILON` floor).
    """
    x = np.asarray(x, dtype=np.float32)
    parts = _split(x, num_subspaces)
    sq = np.einsum("nmd,nmd->nm", parts, parts)[..., None]
    return (parts / np.sqrt(np.maximum(sq, L2_EPSILON))).reshape(x.shape)


# --- the quantiser --------------------------------------------------------------------------------


class ProductQuantizer:
    """A learned GPQ codebook as a product quantiser: codes of features, look-up tables of queries.

    ```python
    pq = ProductQuantizer(model.refined_codebook, num_subspaces=12, mode="consistent")
    codes = pq.encode(features)          # uint8 (N, M)
    tables = pq.lookup_tables(queries)   # float32 (Q, M, K), T[q, m, k] = 1 - q_m . z_mk
    ```

    Args:
        codebook: float (K, M*d): the raw Z for `"original"`, Z' for `"consistent"`.
        num_subspaces: int, M.
        mode: `"original"` (default) or `"consistent"` (see the module docstring).
    """

    def __init__(self, codebook, num_subspaces, mode="original"):
        self.mode = check_mode(mode)
        self.num_subspaces = check_positive_int("num_subspaces", num_subspaces)
        self.codebook = _as_matrix("codebook", codebook)
        self.num_codewords, self.dim = self.codebook.shape
        if self.dim % self.num_subspaces:
            raise ValueError(
                f"The codebook's width ({self.dim}) must be divisible by "
                f"num_subspaces={self.num_subspaces}. Received codebook shape: {self.codebook.shape}"
            )
        try:
            check_num_codewords(self.num_codewords, "codebook rows")
        except ValueError as exc:
            raise ValueError(f"{exc}. Received codebook shape: {self.codebook.shape}") from None
        self.subspace_dim = self.dim // self.num_subspaces
        self.nbits = int(math.log2(self.num_codewords))
        normalized = intra_normalize_np(self.codebook, self.num_subspaces)
        self.words = normalized if mode == "consistent" else self.codebook  # what distances use
        self._assign = _split(normalized, self.num_subspaces).transpose(
            1, 2, 0
        )  # (M, d, K), for codes

    @classmethod
    def from_model(cls, model, mode=None):
        """The quantiser of a GPQ model in `mode` (None: `model.gpq_config.retrieval_mode`): the raw Z for
        `original`, Z' = SA(intra_norm(C), Z) for `consistent`."""
        mode = check_mode(model.gpq_config.retrieval_mode if mode is None else mode)
        codebook = model.codebook if mode == "original" else model.refined_codebook
        return cls(codebook, model.gpq_config.num_subspaces, mode)

    def __repr__(self):
        return (
            f"ProductQuantizer(M={self.num_subspaces}, K={self.num_codewords}, d={self.subspace_dim}, "
            f"mode={self.mode!r})"
        )

    @property
    def code_size(self):
        """Bytes per packed code, ceil(M * log2(K) / 8)."""
        return code_size(self.num_subspaces, self.nbits)

    def encode(self, features):
        """Codes of features (N, M*d): per sub-space, the codeword of largest dot product with the
        intra-normalised codebook -> uint8 (N, M).

        This is the original's `Indexing` (raw features against intra_norm(Z)); intra-normalising the
        features would not change the arg-max. Among equal dot products the lowest index wins.
        """
        features = _as_matrix("features", features, self.dim)
        codes = np.empty((features.shape[0], self.num_subspaces), np.uint8)
        step = max(1, _CHUNK_ELEMENTS // (self.num_subspaces * self.num_codewords))
        for start in range(0, features.shape[0], step):
            block = _split(features[start : start + step], self.num_subspaces).transpose(
                1, 0, 2
            )  # (M, n, d)
            codes[start : start + step] = np.matmul(block, self._assign).argmax(-1).T
        return codes

    def decode(self, codes):
        """The reconstructions of codes (N, M): each sub-vector the codeword distances use (`words`) ->
        float32 (N, M*d)."""
        codes = self.check_codes(codes)
        words = _split(self.words, self.num_subspaces)  # (K, M, d)
        return words[codes, np.arange(self.num_subspaces)].reshape(codes.shape[0], self.dim)

    def prepare_queries(self, queries):
        """Queries as this mode compares them: raw (`original`) or intra-normalised (`consistent`), float32."""
        queries = _as_matrix("queries", queries, self.dim)
        return (
            intra_normalize_np(queries, self.num_subspaces)
            if self.mode == "consistent"
            else queries
        )

    def lookup_tables(self, queries):
        """T[q, m, k] = 1 - q_m . z_mk for queries (Q, M*d) -> float32 (Q, M, K).

        `original`: raw queries, raw codebook. `consistent`: both intra-normalised.
        """
        queries = _split(self.prepare_queries(queries), self.num_subspaces)
        return np.float32(1.0) - np.einsum(
            "qmd,kmd->qmk", queries, _split(self.words, self.num_subspaces)
        )

    def check_codes(self, codes, name="codes"):
        """`codes` as contiguous uint8 (N, M) codeword indices < K; a ValueError naming `name` otherwise."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.num_subspaces:
            raise ValueError(
                f"`{name}` must have shape (N, {self.num_subspaces}). Received shape: {codes.shape}"
            )
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(
                f"`{name}` must be integer codeword indices. Received dtype: {codes.dtype}"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codewords):
            raise ValueError(
                f"`{name}` must be codeword indices in [0, {self.num_codewords}); it holds "
                f"{codes.min()}..{codes.max()}"
            )
        return np.ascontiguousarray(codes, dtype=np.uint8)


# --- code packing ---------------------------------------------------------------------------------


def code_size(num_subspaces, nbits):
    """Bytes per packed code: ceil(M * nbits / 8)."""
    return (num_subspaces * nbits + 7) // 8


def pack_codes(codes, nbits):
    """uint8 codes (N, M) -> packed uint8 (N, ceil(M*nbits/8)), M*nbits bits per item.

    The bit layout is faiss' `ProductQuantizer` layout (little-endian bit string: codebook m occupies
    bits [m*nbits, (m+1)*nbits) counted from the least significant bit of byte 0), so packed codes can be
    handed to a faiss `IndexPQ` as they are.
    """
    nbits = check_positive_int("nbits", nbits)
    if nbits > 8:
        raise ValueError(f"nbits must be in [1, 8]. Received: nbits={nbits}")
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"`codes` must be integers of shape (N, M). Received: {codes.dtype} {codes.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << nbits)):
        raise ValueError(f"`codes` must be in [0, {1 << nbits}) for nbits={nbits}")
    n, num_subspaces = codes.shape
    bits = np.unpackbits(codes.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :nbits]
    bits = bits.reshape(n, num_subspaces * nbits)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_codes(packed, num_subspaces, nbits):
    """Inverse of `pack_codes`: packed uint8 (N, ceil(M*nbits/8)) -> uint8 codes (N, M)."""
    nbits = check_positive_int("nbits", nbits)
    num_subspaces = check_positive_int("num_subspaces", num_subspaces)
    packed = np.asarray(packed)
    size = code_size(num_subspaces, nbits)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != size:
        raise ValueError(
            f"packed codes must be uint8 of shape (N, {size}). "
            f"Received: {packed.dtype} {packed.shape}"
        )
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_subspaces * nbits]
    bits = bits.reshape(packed.shape[0], num_subspaces, nbits)
    return np.packbits(bits, axis=-1, bitorder="little")[..., 0]


# --- ranking --------------------------------------------------------------------------------------


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


def _decode_distances(keys):
    """The float32 distances of `sort_keys` keys (their high halves) -> (Q, N)."""
    high = (keys >> 32).astype(np.int32)
    bits = np.abs(high) | (high & np.int32(-0x80000000))
    return bits.view(np.float32)


def smallest_k(keys, k):
    """The k smallest keys of each row, sorted ascending -> (rows, k). Reorders `keys` in place."""
    if k >= keys.shape[1]:
        keys.sort(axis=1)
        return keys
    keys.partition(k - 1, axis=1)
    part = keys[:, :k].copy()
    part.sort(axis=1)
    return part


def _onehot_t(codes, num_codewords):
    """uint8 codes (n, M) -> float32 (M*K, n), a 1 in row m*K + code_m of each column."""
    n, num_subspaces = codes.shape
    out = np.zeros((num_subspaces * num_codewords, n), np.float32)
    rows = (
        codes.T.astype(np.intp) + (np.arange(num_subspaces, dtype=np.intp) * num_codewords)[:, None]
    )
    np.put_along_axis(out, rows, np.float32(1.0), axis=0)
    return out


def _table_distances(tables, onehot_blocks, out):
    """out = T (Q, M*K) @ onehot (M*K, n), i.e. sum_m T[q, m, code_m] for each code, block by block.

    One matrix product over exact 0/1 weights: each distance is a float32 sum of the M table entries of
    its code. The summation order is the BLAS's, so the last bit may depend on the batch shape; equal
    codes in one call get equal distances because each distinct code is computed once.
    """
    flat = tables.reshape(tables.shape[0], -1)
    start = 0
    for block in onehot_blocks:
        oh = block() if callable(block) else block
        np.matmul(flat, oh, out=out[:, start : start + oh.shape[1]])
        start += oh.shape[1]
    return out


def _gathered_distances(tables, codes):
    """sum_m T[q, m, codes[q, c, m]] for tables (Q, M, K) and each query's candidate codes (Q, C, M) ->
    float32 (Q, C), summed m = 0, 1, ... in float32, the order of `_table_distances`' matrix product."""
    out = np.zeros(codes.shape[:2], np.float32)
    for m in range(tables.shape[1]):
        out += np.take_along_axis(tables[:, m, :], codes[:, :, m].astype(np.intp), axis=1)
    return out


def fast_scan_error_bound(tables):
    """The largest error of faiss' 4-bit fast-scan distances for each query, from its tables (Q, M, K) ->
    float64 (Q,).

    Fast-scan adds look-up tables quantised to 8 bits: faiss (`quantize_lut::round_uint8_per_column`)
    subtracts each sub-space's minimum and rounds T * a to an integer, a = 255 / (largest span of a
    sub-space's table), so each of the M added entries is off by at most 1 / (2a) and a distance by at
    most M * span / 510. The bound adds 0.1 % and a float32 rounding margin (faiss computes its own
    tables and decodes b + sum / a in float32).
    """
    tables = np.asarray(tables, np.float64)
    num_subspaces = tables.shape[1]
    span = (tables.max(axis=2) - tables.min(axis=2)).max(axis=1)
    scale = np.abs(tables).max(axis=(1, 2)) + 1.0
    return (
        num_subspaces * span / 510.0 * 1.001 + 64 * num_subspaces * np.finfo(np.float32).eps * scale
    )


# --- the index ------------------------------------------------------------------------------------


class PQIndex:
    """A database of GPQ codes searched by asymmetric distance, with faiss' `add`/`search` feel.

    ```python
    index = PQIndex.from_model(model)          # codebook and mode from the trained model
    index.add(model.encode(db_images), labels=db_labels)
    distances, ids = index.search(model.encode(query_images), k=100)
    ```

    Distances are sums of per-query look-up tables (`ProductQuantizer.lookup_tables`) over each item's
    code, computed in chunks of queries; results are ascending in distance, ties in insertion order.

    Args:
        codebook: float (K, M*d), the retrieval codebook: raw Z for `original`, Z' for `consistent`.
        num_subspaces: int, M.
        mode: `"original"` (default) or `"consistent"` (see the module docstring).
        class_names: optional names of the label classes (see `class_names`).

    Attributes:
        pq: the `ProductQuantizer`; `mode`, `num_subspaces`, `num_codewords`, `dim` (M*d) and `nbits`
            (log2 K) are its values.
    """

    def __init__(self, codebook, num_subspaces, mode="original", class_names=None):
        pq = self.pq = ProductQuantizer(codebook, num_subspaces, mode)
        self.mode, self.num_subspaces, self.num_codewords = (
            pq.mode,
            pq.num_subspaces,
            pq.num_codewords,
        )
        self.dim, self.nbits = pq.dim, pq.nbits
        self.model_fingerprint = (
            None  # `GPQ.fingerprint` of the model that made the codebook, when known
        )
        self._model = None
        self.reset()
        self.class_names = class_names

    @classmethod
    def from_model(cls, model, mode=None, class_names=None):
        """An empty index with a GPQ model's codebook: Z for `original`, Z' for `consistent`; mode None
        takes `model.gpq_config.retrieval_mode`. The model is kept for `add_images`."""
        pq = ProductQuantizer.from_model(model, mode)
        index = cls(pq.codebook, pq.num_subspaces, pq.mode, class_names=class_names)
        index._model = model
        index.model_fingerprint = model.fingerprint
        return index

    def check_model(self, model):
        """Raise a ValueError unless `model` is the one this index was built with (its `fingerprint`):
        searching with another model's features gives meaningless distances."""
        if self.model_fingerprint is not None and model.fingerprint != self.model_fingerprint:
            raise ValueError(
                f"the index was built with another model (fingerprint {self.model_fingerprint}; "
                f"this model's is {model.fingerprint}): rebuild the index with this model"
            )

    # --- contents ---------------------------------------------------------------------------------
    def reset(self):
        """Remove all items (`class_names` stay)."""
        self._codes = np.zeros((0, self.num_subspaces), np.uint8)
        self._ids = np.zeros((0,), np.int64)
        self._labels = None
        self._sources = None
        self._cache = {}

    @property
    def codebook(self):
        """The codebook the index was made with, float32 (K, M*d)."""
        return self.pq.codebook

    @property
    def ntotal(self):
        """Number of items in the index."""
        return int(self._codes.shape[0])

    @property
    def code_size(self):
        """Bytes per packed code, ceil(M * log2(K) / 8)."""
        return self.pq.code_size

    @property
    def codes(self):
        """The items' codes, uint8 (ntotal, M) (read-only)."""
        return _read_only(self._codes)

    @property
    def ids(self):
        """The items' ids, int64 (ntotal,) (read-only); 0..ntotal-1 unless given to `add`."""
        return _read_only(self._ids)

    @property
    def labels(self):
        """The items' labels, (ntotal,) or (ntotal, classes), or None when none were added."""
        return self._labels

    @property
    def sources(self):
        """The items' sources (file paths or names), unicode (ntotal,) (read-only), or None when none were
        added."""
        return None if self._sources is None else _read_only(self._sources)

    @property
    def class_names(self):
        """Names of the label classes, a list of str, or None: class id i (labels (ntotal,)) or multi-hot
        column i (labels (ntotal, classes)) is named class_names[i].

        Settable: unique non-empty strings; int labels must be in [0, len(class_names)), multi-hot labels
        must have len(class_names) columns (checked here and by every `add`).
        """
        return None if self._class_names is None else list(self._class_names)

    @class_names.setter
    def class_names(self, names):
        if names is None:
            self._class_names = None
            return
        names = _check_class_names(names)
        if self._labels is not None:
            _check_labels_fit(self._labels, names, "class_names")
        self._class_names = names

    def __len__(self):
        return self.ntotal

    def __repr__(self):
        return (
            f"PQIndex(M={self.num_subspaces}, K={self.num_codewords}, d={self.pq.subspace_dim}, "
            f"mode={self.mode!r}, ntotal={self.ntotal})"
        )

    def add(self, x, ids=None, labels=None, sources=None):
        """Add items: uint8 codes (N, M), or float features (N, M*d) that are encoded first.

        Args:
            x: uint8 codes or float features.
            ids: optional int64 ids (N,) that `search` returns; default ntotal, ntotal+1, ...
                Either every `add` gives ids or none does.
            labels: optional labels (N,) int or (N, classes) multi-hot, kept for evaluation; either
                every `add` gives labels or none does. With `class_names`, they must fit them.
            sources: optional N strings (N,), each item's file path or name (`sources_for`); either
                every `add` gives sources or none does.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(
                f"`x` must be codes (N, {self.num_subspaces}) or features (N, {self.dim}). "
                f"Received shape: {x.shape}"
            )
        if x.dtype == np.uint8:
            codes = self.pq.check_codes(x, "x")
        elif np.issubdtype(x.dtype, np.floating):
            codes = self.pq.encode(x)
        else:
            raise ValueError(
                f"`x` must be uint8 codes or float features. Received dtype: {x.dtype}"
            )
        n = codes.shape[0]
        ids = self._new_ids(ids, n)
        all_labels = self._new_labels(labels, n)
        if labels is not None and self._class_names is not None:
            _check_labels_fit(all_labels[self.ntotal :], self._class_names, "labels")
        sources = self._new_sources(sources, n)
        if self.ntotal + n >= _MAX_ITEMS:
            raise ValueError(
                f"PQIndex holds fewer than {_MAX_ITEMS} items; use `to_faiss()` for more"
            )
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, ids])
        self._labels = all_labels
        self._sources = sources
        self._cache = {}
        return self

    def _new_ids(self, ids, n):
        if ids is None:
            if self.ntotal and not np.array_equal(self._ids, np.arange(self.ntotal)):
                raise ValueError("this index has custom ids; give `ids` to every `add`")
            return np.arange(self.ntotal, self.ntotal + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`ids` must be {n} integers (shape ({n},)). Received: {ids.dtype} {ids.shape}"
            )
        return ids.astype(np.int64)

    def _new_labels(self, labels, n):
        """All labels after adding `labels` for n items (None when the index keeps none)."""
        if labels is None:
            if self._labels is not None and n:
                raise ValueError("this index has labels; give `labels` to every `add`")
            return self._labels
        labels = np.asarray(labels)
        if labels.ndim not in (1, 2) or labels.shape[0] != n:
            raise ValueError(
                f"`labels` must have shape ({n},) or ({n}, classes). Received shape: {labels.shape}"
            )
        if self._labels is None:
            if self.ntotal:
                raise ValueError(
                    "items without labels were added before; labels must be given to every add"
                )
            return labels.copy()
        if labels.ndim != self._labels.ndim or labels.shape[1:] != self._labels.shape[1:]:
            raise ValueError(
                f"`labels` shape {labels.shape[1:]} does not match the index's "
                f"{self._labels.shape[1:]}"
            )
        return np.concatenate([self._labels, labels])

    def _new_sources(self, sources, n):
        """All sources after adding `sources` for n items, unicode (ntotal + n,) (None when the index keeps
        none)."""
        if sources is None:
            if self._sources is not None and n:
                raise ValueError("this index has sources; give `sources` to every `add`")
            return self._sources
        if isinstance(sources, (str, bytes)):
            raise ValueError(f"`sources` must be {n} strings (shape ({n},)), not one string")
        if not isinstance(sources, np.ndarray):
            sources = list(sources)
            bad = next((s for s in sources if not isinstance(s, str)), None)
            if bad is not None:
                raise ValueError(
                    f"`sources` must be strings. Received an item of type {type(bad).__name__}"
                )
            sources = np.array(sources, dtype=str) if sources else np.zeros(0, "U1")
        elif sources.dtype.kind == "T":  # NumPy's variable-width StringDType
            sources = sources.astype(str)
        if sources.shape != (n,) or sources.dtype.kind != "U":
            raise ValueError(
                f"`sources` must be {n} strings (shape ({n},)). "
                f"Received: {sources.dtype} {sources.shape}"
            )
        if self._sources is None:
            if self.ntotal:
                raise ValueError(
                    "items without sources were added before; sources must be given to every add"
                )
            return sources.copy()
        return np.concatenate([self._sources, sources])

    def add_images(self, images, ids=None, labels=None, batch_size=500, sources=None):
        """Encode images (pixels (N, H, W, C), uint8 or float in 0..255) with the model of `from_model` and
        add them."""
        if self._model is None:
            raise ValueError("add_images needs an index made by PQIndex.from_model(model)")
        self.add(
            self._model.encode(np.asarray(images), batch_size=batch_size),
            ids=ids,
            labels=labels,
            sources=sources,
        )
        return self

    # --- ids to items -----------------------------------------------------------------------------
    def _positions(self, ids):
        """Database positions of `ids` as `search` returns them (any shape, -1: no result) -> intp of the
        same shape, -1 where the id is -1; a ValueError for an id not in the index."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"`ids` must be integer ids as `search` returns them. Received dtype: {ids.dtype}"
            )
        if ids.size and ids.dtype.kind == "u" and ids.max() > np.iinfo(np.int64).max:
            raise ValueError(f"`ids` holds an id not in the index: {ids.max()}")
        ids = ids.astype(np.int64)
        found = ids != -1
        wanted = ids[found]
        if "order" not in self._cache:  # None: the default ids 0..ntotal-1 are the positions
            default = np.array_equal(self._ids, np.arange(self.ntotal))
            self._cache["order"] = None if default else np.argsort(self._ids)
        order = self._cache["order"]
        if order is None:
            positions = wanted
            known = (wanted >= 0) & (wanted < self.ntotal)
        else:  # custom ids (so ntotal >= 1): binary search in the sorted ids
            positions = order[
                np.minimum(np.searchsorted(self._ids, wanted, sorter=order), self.ntotal - 1)
            ]
            known = self._ids[positions] == wanted
        if not known.all():
            unknown = np.unique(wanted[~known])
            raise ValueError(
                f"`ids` holds {len(unknown)} id(s) not in the index: {unknown[:5].tolist()}"
                f"{' ...' if len(unknown) > 5 else ''}"
            )
        out = np.full(ids.shape, -1, np.intp)
        out[found] = positions
        return out

    def sources_for(self, ids):
        """The sources of `ids` as `search` returns them (int64, any shape) -> unicode array of the same
        shape, "" where the id is -1 (no result)."""
        if self._sources is None:
            raise ValueError("this index has no sources; give `sources` to `add`")
        positions = self._positions(ids)
        out = np.full(positions.shape, "", self._sources.dtype)
        found = positions >= 0
        out[found] = self._sources[positions[found]]
        return out

    def class_names_for(self, ids):
        """The class names of the (int) labels of `ids` as `search` returns them (int64, any shape) ->
        unicode array of the same shape, "" where the id is -1 (no result)."""
        if self._class_names is None:
            raise ValueError("this index has no class names; set `class_names`")
        if self._labels is None:
            raise ValueError("this index has no labels; give `labels` to `add`")
        if self._labels.ndim != 1:
            raise ValueError(
                "class_names_for needs int labels (ntotal,); this index's labels are multi-hot "
                f"{self._labels.shape}"
            )
        positions = self._positions(ids)
        names = np.array(self._class_names, dtype=str)
        out = np.full(positions.shape, "", names.dtype)
        found = positions >= 0
        out[found] = names[self._labels[positions[found]].astype(np.intp)]
        return out

    # --- distances --------------------------------------------------------------------------------
    def _unique(self):
        """(unique codes, inverse) or None when all codes differ; cached until the next `add`."""
        if "unique" not in self._cache:
            codes = self._codes
            if self.num_subspaces * self.nbits <= 63:
                packed = np.zeros(codes.shape[0], np.int64)
                for m in range(self.num_subspaces):
                    packed = (packed << self.nbits) | codes[:, m]
                _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
                unique = codes[first]
            else:
                unique, inverse = np.unique(codes, axis=0, return_inverse=True)
            self._cache["unique"] = (
                None if len(unique) == len(codes) else (unique, inverse.reshape(-1))
            )
        return self._cache["unique"]

    def _onehot_blocks(self, codes):
        """Transposed one-hot blocks (M*K, n) of the codes to search: one cached block when it takes at
        most 256 MB, else blocks of 65,536 codes made on demand."""
        size = codes.shape[0] * self.num_subspaces * self.num_codewords * 4
        if size > _ONEHOT_CACHE_BYTES:
            return [
                lambda s=s: _onehot_t(codes[s : s + _DB_BLOCK], self.num_codewords)
                for s in range(0, codes.shape[0], _DB_BLOCK)
            ]
        if "onehot" not in self._cache:
            self._cache["onehot"] = [_onehot_t(codes, self.num_codewords)]
        return self._cache["onehot"]

    def _iter_distances(self, queries, chunk_size=None):
        """Yield (start, distances (chunk, ntotal) float32) over chunks of queries (Q, M*d); the array is a
        buffer the next chunk reuses."""
        queries = _as_matrix("queries", queries, self.dim)
        unique = self._unique()
        codes = self._codes if unique is None else unique[0]
        blocks = self._onehot_blocks(codes)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(1, self.ntotal))
        chunk_size = check_positive_int("chunk_size", chunk_size)
        buffer = np.empty((min(chunk_size, len(queries)), codes.shape[0]), np.float32)
        expanded = None if unique is None else np.empty((len(buffer), self.ntotal), np.float32)
        for start in range(0, queries.shape[0], chunk_size):
            tables = self.pq.lookup_tables(queries[start : start + chunk_size])
            dist = _table_distances(tables, blocks, buffer[: len(tables)])
            if unique is not None:
                dist = np.take(dist, unique[1], axis=1, out=expanded[: len(tables)])
            yield start, dist

    def distances(self, queries):
        """All distances sum_m (1 - q_m . z_m[code_m]) of queries (Q, M*d) to the items -> float32 (Q, ntotal).

        `original` mode uses raw queries and the raw codebook Z, as the original's `pqDist`; `consistent`
        intra-normalises both. For large databases prefer `search` or `rank`, which bound memory.
        """
        queries = _as_matrix("queries", queries, self.dim)
        out = np.empty((queries.shape[0], self.ntotal), np.float32)
        for start, dist in self._iter_distances(queries):
            out[start : start + dist.shape[0]] = dist
        return out

    # --- ranking ----------------------------------------------------------------------------------
    def rank(self, queries, k=None, chunk_size=None, with_distances=True):
        """Yield the top-k of each query chunk by chunk, so memory stays bounded -> `RankedChunk`s.

        Each chunk holds database positions (insertion order: rows of `codes` and `labels`), best first,
        ties by position, and with `with_distances` their distances. Its arrays may be buffers that the
        next chunk reuses: copy them to keep them.

        ```python
        result = metrics.evaluate_ranking(index.rank(queries, with_distances=False), query_labels,
                                          index.labels)
        ```

        Args:
            queries: float (Q, M*d).
            k: int in [1, ntotal]; None ranks the whole database.
            chunk_size: queries per chunk; default about 8M distances (155 queries at 54,000 items), or
                4,096 for a top-k (k < ntotal / 4) of more than 65,536 items, which passes over the
                database block by block (`search`'s NumPy path), so time stays linear in ntotal.
            with_distances: also decode the distances (evaluation does not need them).
        """
        if not self.ntotal:
            raise ValueError("the index is empty")
        k = self.ntotal if k is None else check_positive_int("k", k)
        if k > self.ntotal:
            raise ValueError(f"k={k} exceeds the {self.ntotal} items in the index")
        if (
            4 * k < self.ntotal and self.ntotal > _DB_BLOCK
        ):  # a top-k of a large database: block by block
            queries = _as_matrix("queries", queries, self.dim)
            step = (
                _TOP_K_QUERIES
                if chunk_size is None
                else check_positive_int("chunk_size", chunk_size)
            )
            for start in range(0, queries.shape[0], step):
                keys = self._search_blocks(self.pq.lookup_tables(queries[start : start + step]), k)
                yield RankedChunk(
                    start,
                    keys.view(np.int32)[:, 0::2],
                    _decode_distances(keys) if with_distances else None,
                )
            return
        keys = None
        for start, dist in self._iter_distances(queries, chunk_size):
            if keys is None:
                keys = np.empty(dist.shape, np.int64)

            def rank_rows(rows, dist=dist):
                return smallest_k(sort_keys(dist[rows], out=keys[rows]), k)

            ranked = map_rows(rank_rows, len(dist))
            # k = ntotal sorts the rows of `keys` in place: no copy; a smaller k gives new arrays.
            ranked = keys[: len(dist)] if k == self.ntotal else np.concatenate(ranked)
            positions = ranked.view(np.int32)[:, 0::2]  # the low halves (little-endian): positions
            yield RankedChunk(
                start, positions, _decode_distances(ranked) if with_distances else None
            )

    def search(self, queries, k, exact=True, backend="auto", chunk_size=None):
        """The k nearest items of each query (Q, M*d) -> (distances float32 (Q, k), ids int64 (Q, k)).

        Ascending distance, ties by insertion order; k > ntotal pads with inf and -1, as faiss does. Time
        is linear in ntotal and memory bounded by a block of 65,536 items.

        Args:
            queries: float (Q, M*d).
            k: int, results per query.
            exact: True (default): the results equal brute-force asymmetric search. False with the
                faiss backend: faiss' fast-scan results as they are, with distances from 8-bit look-up
                tables (off by up to `fast_scan_error_bound`) and a warning that says so.
            backend: `"numpy"`, brute force over blocks of codes; `"faiss"`, faiss' 4-bit fast-scan
                (`IndexPQFastScan`, K=16 only) for candidates, re-ranked exactly; `"auto"` (default):
                `"faiss"` when faiss is installed and K=16, else `"numpy"`.
            chunk_size: queries per chunk of the NumPy path's full ranking (small databases).
        """
        queries = _as_matrix("queries", queries, self.dim)
        k = check_positive_int("k", k)
        dist = np.full((queries.shape[0], k), np.inf, np.float32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        kk = min(k, self.ntotal)
        if not kk:
            return dist, ids
        if self._backend(backend) == "faiss":
            dist[:, :kk], positions = self._search_fast_scan(queries, kk, exact)
            ids[:, :kk] = np.where(positions >= 0, self._ids[positions], -1)
        else:
            for chunk in self.rank(queries, kk, chunk_size):
                rows = slice(chunk.start, chunk.start + len(chunk.positions))
                dist[rows, :kk] = chunk.distances
                ids[rows, :kk] = self._ids[chunk.positions]
        return dist, ids

    def _backend(self, backend):
        if backend not in SEARCH_BACKENDS:
            raise ValueError(f"`backend` must be one of {SEARCH_BACKENDS}. Received: {backend!r}")
        if backend == "auto":
            try:
                import_faiss()
            except ImportError:
                return "numpy"
            return "faiss" if self.nbits == 4 else "numpy"
        if backend == "faiss":
            import_faiss()
            if self.nbits != 4:
                raise ValueError(
                    f"the faiss backend is 4-bit fast-scan: it needs K=16 codewords, this index "
                    f"has K={self.num_codewords}; use backend='numpy'"
                )
        return backend

    def _search_blocks(self, tables, k):
        """Exact top-k keys (`sort_keys` of (distance, position)), sorted, for tables (Q, M, K) -> int64
        (Q, k).

        Blocks of the database outside, queries inside: each block's one-hot codes are built once and
        every query keeps a running top-k, so the cost is linear in ntotal and memory is a block's.
        """
        tables = tables.reshape(tables.shape[0], -1)
        num_queries = tables.shape[0]
        width = min(_DB_BLOCK, self.ntotal)
        step = max(1, min(num_queries, _CHUNK_ELEMENTS // width))
        best = np.full((num_queries, k), np.iinfo(np.int64).max, np.int64)
        dist_buffer = np.empty(step * width, np.float32)
        key_buffer = np.empty(step * width, np.int64)
        for start in range(0, self.ntotal, _DB_BLOCK):
            onehot = _onehot_t(self._codes[start : start + _DB_BLOCK], self.num_codewords)
            for first in range(0, num_queries, step):
                chunk = tables[first : first + step]
                shape = (chunk.shape[0], onehot.shape[1])
                dist = np.matmul(
                    chunk, onehot, out=dist_buffer[: shape[0] * shape[1]].reshape(shape)
                )
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

    def _search_fast_scan(self, queries, k, exact):
        """Top-k (distances float32 (Q, k), positions int64 (Q, k)) by faiss' 4-bit fast-scan.

        exact: each query fetches `fetch` candidates (first 2k + 32) by their approximate distances a and
        re-ranks them by exact distance. With e the error bound of its tables (`fast_scan_error_bound`),
        an item not fetched has a >= a_max (the largest fetched), so exact distance >= a_max - e; when that
        exceeds the k-th exact distance D_k, no item outside can beat or tie any result, and the top-k
        equals brute force, ties included. Queries where it does not hold fetch 4 times more, and fall
        back to brute force (`_search_blocks`) once that would be the whole database.
        """
        index = self._cache.get("fast_scan")
        if index is None:
            faiss = import_faiss()
            index = self._cache["fast_scan"] = faiss.IndexPQFastScan(self._faiss_pq(), 32)
        prepared = self.pq.prepare_queries(queries)
        m = np.float32(self.num_subspaces)
        if not exact:
            warnings.warn(
                "PQIndex.search(exact=False): fast-scan results, not re-ranked; distances come from "
                "8-bit look-up tables",
                stacklevel=3,
            )
            similarities, positions = index.search(prepared, k)
            return m - similarities, positions
        tables = self.pq.lookup_tables(queries)
        bound = fast_scan_error_bound(tables)
        dist = np.empty((len(queries), k), np.float32)
        positions = np.empty((len(queries), k), np.int64)
        pending = np.arange(len(queries))
        fetch = 2 * k + 32
        while len(pending) and fetch < self.ntotal:
            similarities, found = index.search(prepared[pending], fetch)
            approx = np.float64(m) - similarities.astype(np.float64)
            usable = (found >= 0).all(axis=1) & np.isfinite(approx).all(axis=1)
            found = np.where(found >= 0, found, 0)
            exact_dist = _gathered_distances(tables[pending], self._codes[found])
            keys = smallest_k(sort_keys(exact_dist, positions=found), k)
            kth = _decode_distances(keys[:, -1:])[:, 0].astype(np.float64)
            done = usable & (approx.max(axis=1) - bound[pending] > kth)
            dist[pending[done]] = _decode_distances(keys[done])
            positions[pending[done]] = keys[done].view(np.int32)[:, 0::2]
            pending = pending[~done]
            fetch *= 4
        if len(pending):
            keys = self._search_blocks(tables[pending], k)
            dist[pending] = _decode_distances(keys)
            positions[pending] = keys.view(np.int32)[:, 0::2]
        return dist, positions

    # --- faiss and files --------------------------------------------------------------------------
    def _faiss_pq(self, add=True):
        """A faiss `IndexPQ` (inner product) of the codes (`add`) searched by database position, or empty."""
        faiss = import_faiss()
        d = self.pq.subspace_dim
        if d == 2 and self.num_codewords < 8:
            raise ValueError(
                "faiss' IndexPQ cannot search 2-d sub-vectors with fewer than 8 codewords "
                f"(its dsub=2 kernel needs K % 8 == 0). Received K={self.num_codewords}"
            )
        index = faiss.IndexPQ(self.dim, self.num_subspaces, self.nbits, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(self._faiss_centroids(), index.pq.centroids)
        index.is_trained = True
        if add and self.ntotal:
            index.add_sa_codes(pack_codes(self._codes, self.nbits))
        return index

    def _faiss_centroids(self):
        """The codebook in faiss' centroid layout (M, K, d), flat float32."""
        centroids = _split(self.pq.words, self.num_subspaces).transpose(1, 0, 2)
        return np.ascontiguousarray(centroids, np.float32).ravel()

    def to_faiss(self, fast_scan=False, nlist=None, nprobe=1, train=None, seed=0):
        """The same codes in a faiss index (inner product, this index's codebook as the PQ centroids).

        faiss returns similarities s = sum_m q_m . z_m[code_m]; this index's distance is M - s, so the
        rankings agree (faiss orders equal distances its own way, not by id). Search it with
        `index.pq.prepare_queries(q)` (identity in `original` mode); write it with `faiss.write_index`.
        Needs the `[faiss]` extra.

        - default: `IndexPQ`, exact distances (custom ids come wrapped in a `faiss.IndexIDMap`).
        - `fast_scan=True` (K=16): `IndexPQFastScan`, distances from 8-bit look-up tables (approximate,
          see `fast_scan_error_bound`), many times faster.
        - `nlist=n` (K=16): `IndexIVFPQFastScan` for millions of items: a coarse quantiser of n centroids
          (spherical k-means, inner product) trained on `train` (features (N', M*d), e.g. a sample of
          the database's; default 64 * nlist items' reconstructions), not by residual: every list holds the GPQ
          codes unchanged, with fast-scan lists. Each item goes to the list whose centroid has the
          largest inner product with its reconstruction, which is what its distance is computed to;
          a search scans the `nprobe` best lists (`index.nprobe`, settable).

        Sharding: `faiss.IndexShards` searches several such indexes (one per machine or GPU, each with
        its own ids) as one and merges their results.
        """
        faiss = import_faiss()
        if nlist is None:
            custom_ids = not np.array_equal(self._ids, np.arange(self.ntotal))
            index = self._faiss_pq(add=not custom_ids)
            if fast_scan:
                self._backend("faiss")
                index = faiss.IndexPQFastScan(index, 32)
            if not custom_ids:
                return index
            wrapped = faiss.IndexIDMap(index)  # keeps a Python reference to `index`
            if fast_scan:  # fast-scan codes its input: the reconstructions give back the codes
                self._add_reconstructions(wrapped)
            else:
                wrapped.add_sa_codes(pack_codes(self._codes, self.nbits), self._ids)
            return wrapped
        self._backend("faiss")
        nlist = check_positive_int("nlist", nlist)
        nprobe = check_positive_int("nprobe", nprobe)
        if train is None:
            sample = np.random.default_rng(seed).permutation(self.ntotal)[: _TRAIN_PER_LIST * nlist]
            train = self.pq.decode(self._codes[np.sort(sample)])
        else:
            train = self.pq.prepare_queries(_as_matrix("train", train, self.dim))
        if len(train) < nlist:
            raise ValueError(
                f"nlist={nlist} needs at least {nlist} training vectors; got {len(train)}"
            )
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQFastScan(
            quantizer,
            self.dim,
            nlist,
            self.num_subspaces,
            self.nbits,
            faiss.METRIC_INNER_PRODUCT,
            32,
        )
        index.by_residual = False
        index.cp.seed = seed
        index.cp.spherical = (
            True  # unit centroids: the largest inner product picks the nearest direction
        )
        index.cp.max_points_per_centroid = _TRAIN_PER_LIST
        index.train(
            train
        )  # the coarse quantiser; the PQ it also trains is replaced by the GPQ codebook
        faiss.copy_array_to_vector(self._faiss_centroids(), index.pq.centroids)
        self._add_reconstructions(index)
        index.nprobe = min(nprobe, nlist)
        return index

    def _add_reconstructions(self, index):
        """Add the items to a faiss index that codes its input, as their reconstructions with their ids:
        each codeword's nearest codeword is itself, so the index keeps the items' codes (or, for codewords
        that are duplicated, an equal one)."""
        for start in range(0, self.ntotal, _DB_BLOCK):
            block = slice(start, start + _DB_BLOCK)
            index.add_with_ids(self.pq.decode(self._codes[block]), self._ids[block])

    def save(self, path):
        """Write the index to an `.npz` file (format version 3), atomically (temporary file + rename).

        Keys: format, format_version, mode, num_subspaces, nbits, codebook float32 (2**nbits, M*d), codes
        uint8 packed (N, ceil(M*nbits / 8)), ids int64 (N,), labels when present, sources unicode (N,) and
        class_names unicode (classes,) when present, model_fingerprint (or ""), and checksum, a SHA-256 of
        all of them that `load` verifies. No object arrays: `np.load(path, allow_pickle=False)` reads it.
        """
        arrays = {
            "format": np.array(_FORMAT_NAME),
            "format_version": np.array(FORMAT_VERSION, np.int64),
            "mode": np.array(self.mode),
            "num_subspaces": np.array(self.num_subspaces, np.int64),
            "nbits": np.array(self.nbits, np.int64),
            "codebook": self.codebook,
            "codes": pack_codes(self._codes, self.nbits),
            "ids": self._ids,
            "model_fingerprint": np.array(self.model_fingerprint or ""),
        }
        if self._labels is not None:
            arrays["labels"] = self._labels
        if self._sources is not None:
            arrays["sources"] = self._sources
        if self._class_names is not None:
            arrays["class_names"] = np.array(self._class_names, dtype=str)
        arrays["checksum"] = np.array(_checksum(arrays))
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path):
        """Read an index written by `save` (format 1, 2 or 3): every key, the checksum, the codebook's size,
        the ids, sources and class names are checked; `FileFormatError` naming the file and the key for
        anything wrong."""
        return _read_index(cls, os.fspath(path))


def _checksum(arrays):
    """SHA-256 (hex) over the keys, dtypes, shapes and bytes of the arrays of an index file."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        if key == "checksum":
            continue
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}:".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _check_class_names(names):
    """`names` as a tuple of unique non-empty str; a ValueError naming `class_names` otherwise."""
    if isinstance(names, np.ndarray) and names.ndim == 1 and names.dtype.kind in "UT":
        names = names.tolist()
    if isinstance(names, (str, bytes)) or not isinstance(names, collections.abc.Sequence):
        raise ValueError(
            f"`class_names` must be a sequence of str. Received: {type(names).__name__}"
        )
    bad = next((name for name in names if not isinstance(name, str)), None)
    if bad is not None:
        raise ValueError(
            f"`class_names` must be str. Received an item of type {type(bad).__name__}"
        )
    if not names:
        raise ValueError("`class_names` must name at least one class")
    names = tuple(
        np.array(names, dtype=str).tolist()
    )  # as a file keeps them (trailing NULs dropped)
    if "" in names:
        raise ValueError(f"`class_names` holds an empty name (position {names.index('')})")
    if len(set(names)) != len(names):
        dups = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        raise ValueError(f"`class_names` holds duplicated names: {dups[:5]}")
    return names


def _check_labels_fit(labels, names, name):
    """A ValueError naming `name` unless `labels` (N,) are class ids in [0, len(names)) or (N, classes)
    multi-hot with len(names) columns."""
    if labels.ndim == 2:
        if labels.shape[1] != len(names):
            raise ValueError(
                f"`{name}`: the multi-hot labels have {labels.shape[1]} columns but "
                f"`class_names` names {len(names)} classes"
            )
        return
    if labels.dtype.kind not in "biu":
        raise ValueError(
            f"`{name}`: `class_names` need integer class ids as labels. Received labels of "
            f"dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"`{name}`: the labels hold class ids {labels.min()}..{labels.max()} but "
            f"`class_names` names {len(names)} classes (ids 0..{len(names) - 1})"
        )


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


def _read_index(cls, path):
    """`PQIndex.load`: every key checked, with the file and the key named in the error."""

    def bad(why):
        return FileFormatError(f"{path}: not a valid PQIndex file: {why}")

    def scalar(key, kind):
        value = arrays[key]
        if value.shape != () or value.dtype.kind not in kind:
            raise bad(f"key {key!r} must be a scalar, got {value.dtype} {value.shape}")
        return value.item()

    arrays = read_npz(path, "index file")
    for key in ("format", "format_version", "mode", "num_subspaces", "codebook", "codes", "ids"):
        if key not in arrays:
            raise bad(f"missing key {key!r}")
    if arrays["format"].shape != () or str(arrays["format"]) != _FORMAT_NAME:
        raise bad(f"key 'format' is {arrays['format']!r}, expected {_FORMAT_NAME!r}")
    version = scalar("format_version", "iu")
    if not 1 <= version <= FORMAT_VERSION:
        raise bad(
            f"key 'format_version' is {version}; this gpq_keras reads versions 1 to {FORMAT_VERSION}"
        )
    if version >= 2:
        for key in ("nbits", "model_fingerprint", "checksum"):
            if key not in arrays:
                raise bad(f"missing key {key!r}")
        if scalar("checksum", "U") != _checksum(arrays):
            raise bad("the checksum does not match the contents (the file was changed or damaged)")
    mode = scalar("mode", "U")
    if mode not in RETRIEVAL_MODES:
        raise bad(f"key 'mode' must be one of {RETRIEVAL_MODES}, got {mode!r}")
    m = scalar("num_subspaces", "iu")
    if m < 1:
        raise bad(f"key 'num_subspaces' must be positive, got {m}")
    codebook = arrays["codebook"]
    if codebook.dtype != np.float32 or codebook.ndim != 2:
        raise bad(f"key 'codebook' must be float32 (K, M*d), got {codebook.dtype} {codebook.shape}")
    if version >= 2 and codebook.shape[0] != 2 ** scalar("nbits", "iu"):
        raise bad(
            f"key 'codebook' has {codebook.shape[0]} rows, but nbits={arrays['nbits']} needs "
            f"{2 ** int(arrays['nbits'])}"
        )
    try:
        index = cls(codebook, m, mode)
    except ValueError as exc:
        raise bad(f"key 'codebook': {exc}") from None
    codes, ids = arrays["codes"], arrays["ids"]
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != index.code_size:
        raise bad(
            f"key 'codes' must be uint8 (N, {index.code_size}), got {codes.dtype} {codes.shape}"
        )
    n = codes.shape[0]
    if ids.dtype != np.int64 or ids.shape != (n,):
        raise bad(f"key 'ids' must be int64 ({n},), got {ids.dtype} {ids.shape}")
    if n and ids.min() < 0:
        raise bad(
            f"key 'ids' holds a negative id ({ids.min()}); ids are >= 0 (-1 means 'no result')"
        )
    if len(np.unique(ids)) != n:
        raise bad("key 'ids' holds duplicated ids")
    labels = arrays.get("labels")
    if labels is not None and (
        labels.ndim not in (1, 2)
        or labels.shape[0] != n
        or labels.dtype.kind not in ("biuU" if labels.ndim == 1 else "biu")
    ):
        raise bad(
            f"key 'labels' must be ({n},) class ids or ({n}, classes) integer/bool multi-hot, "
            f"got {labels.dtype} {labels.shape}"
        )
    sources = arrays.get("sources") if version >= 3 else None
    if sources is not None and (sources.dtype.kind != "U" or sources.shape != (n,)):
        raise bad(
            f"key 'sources' must be unicode strings ({n},), got {sources.dtype} {sources.shape}"
        )
    names = arrays.get("class_names") if version >= 3 else None
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise bad(
            f"key 'class_names' must be unicode strings (classes,), got {names.dtype} {names.shape}"
        )
    unpacked = unpack_codes(codes, index.num_subspaces, index.nbits)
    if n and int(unpacked.max()) >= index.num_codewords:
        raise bad(f"key 'codes' holds an index >= K={index.num_codewords}")
    index.add(unpacked, ids=ids, labels=labels, sources=sources)
    if names is not None:
        try:
            index.class_names = names
        except ValueError as exc:
            raise bad(f"key 'class_names': {exc}") from None
    if version >= 2:
        index.model_fingerprint = scalar("model_fingerprint", "U") or None
    return index
