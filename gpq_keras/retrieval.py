"""Product-quantisation codes and asymmetric search with a learned GPQ codebook (NumPy, faiss export).

Shapes: N = database items, Q = queries, M = `num_subspaces` (codebooks), K = codewords per codebook,
d = sub-vector length, D = M * d the feature length. A code is one codeword index per codebook, stored
as uint8 (N, M) and packable to M * log2(K) bits.

Two retrieval modes (`gpq_keras.config.RETRIEVAL_MODES`):

- `"original"`, exactly what the original release does (`utils/RetrievalTest.py`): a database feature
  is coded with the codeword of the largest dot product between its raw sub-vector and the
  intra-normalised raw codebook Z; the distance of a raw, un-normalised query q to an item is
  sum_m (1 - q_m . Z_m[code_m]) with the raw Z.
- `"consistent"`, with the codebook training quantises with, Z' = SA(intra_norm(C), Z) (intra-normalised),
  intra-normalised queries and the same distance sum_m (1 - q_m . Z'_m[code_m]).

In both modes codes are assigned against the intra-normalised retrieval codebook, so `encode_codes` takes
no mode: the modes differ in the codebook passed (Z or Z') and in how queries are treated.

Ranking is by ascending distance; ties are broken by database position (insertion order), lower first,
so results are deterministic. (The original used NumPy's unstable `argsort`, whose order among equal
distances is unspecified.) Each distinct code's distance is computed once per query, so items with equal
codes always get bit-identical distances and tie; the float32 sum itself comes from one matrix product
(look-up tables x one-hot codes), whose last bit may depend on the BLAS and the batch shape.
"""

import math
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpq_keras.config import RETRIEVAL_MODES
from gpq_keras.files import atomic_path

FORMAT_VERSION = 1
_FORMAT_NAME = "gpq_keras.PQIndex"
_L2_EPSILON = 1e-12  # the floor tf.nn.l2_normalize uses on the squared norm
# Query chunk x database elements per block: 32 MB of distances and 64 MB of sort keys, in buffers
# reused from chunk to chunk (fresh large arrays would be page-faulted in anew each time).
_CHUNK_ELEMENTS = 1 << 23
_ONEHOT_CACHE_BYTES = 256 << 20
_DB_BLOCK = 1 << 16
_MIN_ROWS_PER_THREAD = 8
_threads = {"count": None, "pool": None, "lock": threading.Lock()}


def set_num_threads(count=None):
    """Threads that rank rows of distances in parallel (NumPy's sort releases the GIL).

    None (default) uses the CPUs this process may run on, at most 8; 1 ranks in the calling thread.
    """
    if count is not None:
        count = _check_positive_int("count", count)
    with _threads["lock"]:
        if _threads["pool"] is not None:
            _threads["pool"].shutdown(wait=True)
        _threads["count"], _threads["pool"] = count, None


def get_num_threads():
    """The number of ranking threads in use (see `set_num_threads`)."""
    if _threads["count"] is not None:
        return _threads["count"]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def map_rows(func, num_rows):
    """[func(slice) for slices that split range(num_rows)], run on the ranking threads; in order."""
    parts = max(1, min(get_num_threads(), num_rows // _MIN_ROWS_PER_THREAD))
    bounds = np.linspace(0, num_rows, parts + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if parts == 1:
        return [func(slices[0])]
    with _threads["lock"]:
        if _threads["pool"] is None:
            _threads["pool"] = ThreadPoolExecutor(get_num_threads(), thread_name_prefix="gpq-rank")
        pool = _threads["pool"]
    return list(pool.map(func, slices))


# --- checks ---------------------------------------------------------------------------------------

def _check_mode(mode):
    if mode not in RETRIEVAL_MODES:
        raise ValueError(f"mode must be one of {RETRIEVAL_MODES}. Received: mode={mode!r}")
    return mode


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected a positive int for `{name}`. Received: {name}={value!r}")
    return int(value)


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


def _check_codebook(codebook, num_subspaces):
    num_subspaces = _check_positive_int("num_subspaces", num_subspaces)
    codebook = _as_matrix("codebook", codebook)
    num_codewords, dim = codebook.shape
    if dim % num_subspaces:
        raise ValueError(f"The codebook's width ({dim}) must be divisible by num_subspaces={num_subspaces}. "
                         f"Received codebook shape: {codebook.shape}")
    if num_codewords < 2 or num_codewords > 256 or num_codewords & (num_codewords - 1):
        raise ValueError("The codebook must have K rows, K a power of two in [2, 256] so codes fit uint8. "
                         f"Received codebook shape: {codebook.shape}")
    return codebook, num_subspaces


def _split(x, num_subspaces):
    """(N, M*d) -> (N, M, d)."""
    return x.reshape(x.shape[0], num_subspaces, x.shape[1] // num_subspaces)


# --- encoding and distances -----------------------------------------------------------------------

def intra_normalize_np(x, num_subspaces):
    """L2-normalise each of the M sub-vectors of x (N, M*d) separately -> float32 (N, M*d).

    The NumPy twin of `gpq_keras.layers.intra_normalize` (same 1e-12 floor on the squared norm).
    """
    x = np.asarray(x, dtype=np.float32)
    parts = _split(x, num_subspaces)
    sq = np.einsum("nmd,nmd->nm", parts, parts)[..., None]
    return (parts / np.sqrt(np.maximum(sq, _L2_EPSILON))).reshape(x.shape)


def encode_codes(features, codebook, num_subspaces):
    """Codes of features (N, M*d): per sub-space, the codeword of largest dot product with the
    intra-normalised codebook -> uint8 (N, M).

    This is the original's `Indexing` (raw features against intra_norm(Z)); pass Z for the `original`
    mode and Z' for `consistent` (intra-normalising the features would not change the arg-max).
    Among equal dot products the lowest codeword index wins (`argmax`).
    """
    codebook, num_subspaces = _check_codebook(codebook, num_subspaces)
    features = _as_matrix("features", features, codebook.shape[1])
    words = _split(intra_normalize_np(codebook, num_subspaces), num_subspaces).transpose(1, 2, 0)  # (M, d, K)
    codes = np.empty((features.shape[0], num_subspaces), np.uint8)
    step = max(1, _CHUNK_ELEMENTS // (num_subspaces * words.shape[2]))
    for start in range(0, features.shape[0], step):
        block = _split(features[start:start + step], num_subspaces).transpose(1, 0, 2)  # (M, n, d)
        codes[start:start + step] = np.matmul(block, words).argmax(-1).T
    return codes


def prepare_queries(queries, num_subspaces, mode="original"):
    """Queries as the mode compares them: raw (`original`) or intra-normalised (`consistent`), float32."""
    _check_mode(mode)
    queries = _as_matrix("queries", queries)
    return intra_normalize_np(queries, num_subspaces) if mode == "consistent" else queries


def retrieval_codebook(codebook, num_subspaces, mode="original"):
    """The codebook distances use: raw (`original`) or intra-normalised (`consistent`), float32 (K, M*d)."""
    _check_mode(mode)
    codebook, num_subspaces = _check_codebook(codebook, num_subspaces)
    return intra_normalize_np(codebook, num_subspaces) if mode == "consistent" else codebook


def lookup_tables(queries, codebook, num_subspaces, mode="original"):
    """Per-query look-up tables T[q, m, k] = 1 - q_m . z_mk -> float32 (Q, M, K).

    `original`: raw queries, raw codebook. `consistent`: both intra-normalised.
    """
    words = retrieval_codebook(codebook, num_subspaces, mode)
    queries = prepare_queries(queries, num_subspaces, mode)
    if queries.shape[1] != words.shape[1]:
        raise ValueError(f"`queries` must have shape (Q, {words.shape[1]}). Received shape: {queries.shape}")
    dots = np.einsum("qmd,kmd->qmk", _split(queries, num_subspaces), _split(words, num_subspaces))
    return np.float32(1.0) - dots


def _check_codes(codes, num_subspaces, num_codewords, name="codes"):
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != num_subspaces:
        raise ValueError(f"`{name}` must have shape (N, {num_subspaces}). Received shape: {codes.shape}")
    if codes.dtype != np.uint8:
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"`{name}` must be integer codeword indices. Received dtype: {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() > 255):
            raise ValueError(f"`{name}` must be codeword indices in [0, {num_codewords}).")
        codes = codes.astype(np.uint8)
    if codes.size and int(codes.max()) >= num_codewords:
        raise ValueError(f"`{name}` holds index {int(codes.max())}, but the codebook has only "
                         f"K={num_codewords} codewords")
    return np.ascontiguousarray(codes)


def _onehot_t(codes, num_codewords):
    """uint8 codes (n, M) -> float32 (M*K, n), a 1 in row m*K + code_m of each column."""
    n, num_subspaces = codes.shape
    out = np.zeros((num_subspaces * num_codewords, n), np.float32)
    rows = codes.T.astype(np.intp) + (np.arange(num_subspaces, dtype=np.intp) * num_codewords)[:, None]
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
        np.matmul(flat, oh, out=out[:, start:start + oh.shape[1]])
        start += oh.shape[1]
    return out


def asymmetric_distances(queries, codes, codebook, num_subspaces, mode="original"):
    """All distances sum_m (1 - q_m . z_m[code_m]) of queries (Q, M*d) to coded items (N, M)
    -> float32 (Q, N).

    `original` mode uses raw queries and the raw codebook Z, as the original's `pqDist`; `consistent`
    intra-normalises both. The whole (Q, N) matrix is returned; `PQIndex.search` keeps memory bounded.
    """
    index = PQIndex(codebook, num_subspaces, mode)
    index.add(_check_codes(codes, index.num_subspaces, index.num_codewords))
    return index.distances(queries)


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
    nbits = _check_positive_int("nbits", nbits)
    if nbits > 8:
        raise ValueError(f"nbits must be in [1, 8]. Received: nbits={nbits}")
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"`codes` must be integers of shape (N, M). Received: {codes.dtype} {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << nbits)):
        raise ValueError(f"`codes` must be in [0, {1 << nbits}) for nbits={nbits}")
    n, num_subspaces = codes.shape
    bits = np.unpackbits(codes.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :nbits]
    bits = bits.reshape(n, num_subspaces * nbits)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_codes(packed, num_subspaces, nbits):
    """Inverse of `pack_codes`: packed uint8 (N, ceil(M*nbits/8)) -> uint8 codes (N, M)."""
    nbits = _check_positive_int("nbits", nbits)
    num_subspaces = _check_positive_int("num_subspaces", num_subspaces)
    packed = np.asarray(packed)
    size = code_size(num_subspaces, nbits)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != size:
        raise ValueError(f"packed codes must be uint8 of shape (N, {size}). "
                         f"Received: {packed.dtype} {packed.shape}")
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :num_subspaces * nbits]
    bits = bits.reshape(packed.shape[0], num_subspaces, nbits)
    return np.packbits(bits, axis=-1, bitorder="little")[..., 0]


# --- ranking --------------------------------------------------------------------------------------

def sort_keys(distances, low=None, out=None):
    """int64 keys that sort like (distance, low) -> (Q, N).

    The high 32 bits hold the float32 distance as a two's-complement int of the same order (its
    sign-magnitude bits, so -0.0 and +0.0 are one value); the low 32 bits hold `low`, default the
    column index (anything in [0, 2**31)). `out`: an int64 array of the same shape to fill.
    """
    if not np.little_endian:  # pragma: no cover
        raise RuntimeError("sort_keys needs a little-endian machine")
    distances = np.ascontiguousarray(distances, np.float32)
    if distances.ndim != 2:
        raise ValueError(f"`distances` must have shape (Q, N). Received shape: {distances.shape}")
    keys = np.empty(distances.shape, np.int64) if out is None else out
    halves = keys.view(np.int32).reshape(distances.shape + (2,))  # little-endian: (low, high)
    bits = distances.view(np.int32)
    sign, high = halves[..., 0], halves[..., 1]  # the low half holds the sign until `low` goes in
    np.right_shift(bits, 31, out=sign)  # 0 or -1
    np.bitwise_and(bits, np.int32(0x7FFFFFFF), out=high)
    high ^= sign
    high -= sign  # conditional negation: -magnitude for negative distances
    halves[..., 0] = np.arange(distances.shape[1], dtype=np.int32) if low is None else low
    return keys


def _decode_keys(keys):
    """(distances float32, low int64) from `sort_keys` keys."""
    high = (keys >> 32).astype(np.int32)
    bits = np.abs(high) | (high & np.int32(-0x80000000))
    return bits.view(np.float32), keys & np.int64(0xFFFFFFFF)


def _distance_keys_with_flags(distances, flags, out=None):
    """Keys ordered like (distance, position) that carry a bool flag (Q, N) in bit 0."""
    low = np.arange(0, 2 * distances.shape[1], 2, dtype=np.int32) | flags
    return sort_keys(distances, low, out=out)


def smallest_k(keys, k):
    """The k smallest keys of each row, sorted ascending -> (rows, k). Reorders `keys` in place."""
    if k >= keys.shape[1]:
        keys.sort(axis=1)
        return keys
    keys.partition(k - 1, axis=1)
    part = keys[:, :k].copy()
    part.sort(axis=1)
    return part


def top_k(distances, k):
    """Stable top-k of a distance matrix (Q, N): (D float32 (Q, k), I int64 (Q, k)), ascending distance,
    ties by lower column. k larger than N pads with distance inf and index -1 (as faiss)."""
    distances = np.asarray(distances, np.float32)
    if distances.ndim != 2:
        raise ValueError(f"`distances` must have shape (Q, N). Received shape: {distances.shape}")
    k = _check_positive_int("k", k)
    n = distances.shape[1]
    dist = np.full((distances.shape[0], k), np.inf, np.float32)
    ids = np.full((distances.shape[0], k), -1, np.int64)
    if n:
        dist[:, :min(k, n)], ids[:, :min(k, n)] = _decode_keys(smallest_k(sort_keys(distances), min(k, n)))
    return dist, ids


# --- the index ------------------------------------------------------------------------------------

class PQIndex:
    """A database of GPQ codes searched by asymmetric distance, with faiss' `add`/`search` feel.

    ```python
    index = PQIndex.from_model(model)          # codebook and mode from the trained model
    index.add(model.encode(db_images), labels=db_labels)
    distances, ids = index.search(model.encode(query_images), k=100)
    ```

    `search` computes per-query look-up tables T[q, m, k] = 1 - q_m . z_mk and sums T over each item's
    code, in chunks of queries; results are ascending in distance with ties broken by insertion order.

    Args:
        codebook: float (K, M*d), the retrieval codebook: raw Z for `original`, Z' for `consistent`.
        num_subspaces: int, M.
        mode: `"original"` (default) or `"consistent"` (see the module docstring).
    """

    def __init__(self, codebook, num_subspaces, mode="original"):
        codebook, num_subspaces = _check_codebook(codebook, num_subspaces)
        self.mode = _check_mode(mode)
        self.num_subspaces = num_subspaces
        self.codebook = codebook
        self.num_codewords, self.dim = codebook.shape
        self.nbits = int(math.log2(self.num_codewords))
        self._words = retrieval_codebook(codebook, num_subspaces, mode)  # what distances use
        self._model = None
        self.reset()

    @classmethod
    def from_model(cls, model, mode=None):
        """An empty index with a GPQ model's codebook: Z for `original`, Z' for `consistent`; mode None
        takes `model.gpq_config.retrieval_mode`. The model is kept for `add_images`."""
        config = model.gpq_config
        mode = _check_mode(config.retrieval_mode if mode is None else mode)
        codebook = model.codebook if mode == "original" else model.refined_codebook
        index = cls(codebook, config.num_subspaces, mode)
        index._model = model
        return index

    # --- contents ---------------------------------------------------------------------------------
    def reset(self):
        """Remove all items."""
        self._codes = np.zeros((0, self.num_subspaces), np.uint8)
        self._ids = np.zeros((0,), np.int64)
        self._labels = None
        self._cache = {}

    @property
    def ntotal(self):
        """Number of items in the index."""
        return int(self._codes.shape[0])

    @property
    def code_size(self):
        """Bytes per packed code, ceil(M * log2(K) / 8)."""
        return code_size(self.num_subspaces, self.nbits)

    @property
    def codes(self):
        """The items' codes, uint8 (ntotal, M) (read-only)."""
        view = self._codes.view()
        view.flags.writeable = False
        return view

    @property
    def ids(self):
        """The items' ids, int64 (ntotal,) (read-only); 0..ntotal-1 unless given to `add`."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def labels(self):
        """The items' labels, (ntotal,) or (ntotal, classes), or None when none were added."""
        return self._labels

    def __len__(self):
        return self.ntotal

    def __repr__(self):
        return (f"PQIndex(M={self.num_subspaces}, K={self.num_codewords}, "
                f"d={self.dim // self.num_subspaces}, mode={self.mode!r}, ntotal={self.ntotal})")

    def encode(self, features):
        """Codes of features (N, M*d) against this index's codebook -> uint8 (N, M)."""
        return encode_codes(features, self.codebook, self.num_subspaces)

    def add(self, x, ids=None, labels=None):
        """Add items: uint8 codes (N, M), or float features (N, M*d) that are encoded first.

        Args:
            x: uint8 codes or float features.
            ids: optional int64 ids (N,) that `search` returns; default ntotal, ntotal+1, ...
                Either every `add` gives ids or none does.
            labels: optional labels (N,) int or (N, classes) multi-hot, kept for evaluation; either
                every `add` gives labels or none does.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"`x` must be codes (N, {self.num_subspaces}) or features (N, {self.dim}). "
                             f"Received shape: {x.shape}")
        if x.dtype == np.uint8:
            codes = _check_codes(x, self.num_subspaces, self.num_codewords, "x")
        elif np.issubdtype(x.dtype, np.floating):
            codes = self.encode(x)
        else:
            raise ValueError(f"`x` must be uint8 codes or float features. Received dtype: {x.dtype}")
        n = codes.shape[0]
        default_ids = np.arange(self.ntotal, self.ntotal + n, dtype=np.int64)
        if ids is None:
            if self.ntotal and not np.array_equal(self._ids, np.arange(self.ntotal)):
                raise ValueError("this index has custom ids; give `ids` to every `add`")
            ids = default_ids
        else:
            ids = np.asarray(ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"`ids` must be {n} integers (shape ({n},)). "
                                 f"Received: {ids.dtype} {ids.shape}")
            ids = ids.astype(np.int64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim not in (1, 2) or labels.shape[0] != n:
                raise ValueError(f"`labels` must have shape ({n},) or ({n}, classes). "
                                 f"Received shape: {labels.shape}")
            if self._labels is not None and (labels.ndim != self._labels.ndim
                                             or labels.shape[1:] != self._labels.shape[1:]):
                raise ValueError(f"`labels` shape {labels.shape[1:]} does not match the index's "
                                 f"{self._labels.shape[1:]}")
            if self._labels is None and self.ntotal:
                raise ValueError("items without labels were added before; labels must be given to every add")
            self._labels = labels.copy() if self._labels is None else np.concatenate([self._labels, labels])
        elif self._labels is not None and n:
            raise ValueError("this index has labels; give `labels` to every `add`")
        if self.ntotal + n >= 2 ** 30:
            raise ValueError("PQIndex holds fewer than 2**30 items; use `to_faiss()` for more")
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, ids])
        self._cache = {}
        return self

    def add_images(self, images, ids=None, labels=None, batch_size=500):
        """Encode images with the model of `from_model` and add them. uint8 images are normalised with
        the original's colour statistics; float images are taken as already normalised."""
        if self._model is None:
            raise ValueError("add_images needs an index made by PQIndex.from_model(model)")
        self.add(self._model.encode(np.asarray(images), batch_size=batch_size), ids=ids, labels=labels)
        return self

    # --- search -----------------------------------------------------------------------------------
    def prepare_queries(self, queries):
        """Queries as this mode compares them (raw, or intra-normalised for `consistent`), float32."""
        return prepare_queries(_as_matrix("queries", queries, self.dim), self.num_subspaces, self.mode)

    def lookup_tables(self, queries):
        """T[q, m, k] = 1 - q_m . z_mk, float32 (Q, M, K)."""
        queries = self.prepare_queries(queries)
        return np.float32(1.0) - np.einsum("qmd,kmd->qmk", _split(queries, self.num_subspaces),
                                           _split(self._words, self.num_subspaces))

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
            self._cache["unique"] = None if len(unique) == len(codes) else (unique, inverse.reshape(-1))
        return self._cache["unique"]

    def _onehot_blocks(self, codes):
        """Transposed one-hot blocks (M*K, n) of the codes to search: one cached block when it takes at
        most 256 MB, else blocks of 65,536 codes made on demand."""
        size = codes.shape[0] * self.num_subspaces * self.num_codewords * 4
        if size > _ONEHOT_CACHE_BYTES:
            return [lambda s=s: _onehot_t(codes[s:s + _DB_BLOCK], self.num_codewords)
                    for s in range(0, codes.shape[0], _DB_BLOCK)]
        if "onehot" not in self._cache:
            self._cache["onehot"] = [_onehot_t(codes, self.num_codewords)]
        return self._cache["onehot"]

    def iter_distances(self, queries, chunk_size=None):
        """Yield (start, distances (chunk, ntotal) float32) over chunks of queries, so memory stays bounded.

        chunk_size defaults to about 8M distances per chunk (155 queries for 54,000 items). The yielded
        array is a buffer reused by the next chunk: copy it to keep it.
        """
        queries = self.prepare_queries(queries)
        unique = self._unique()
        codes = self._codes if unique is None else unique[0]
        blocks = self._onehot_blocks(codes)
        chunk_size = self._chunk_size(chunk_size)
        buffer = np.empty((min(chunk_size, len(queries)), codes.shape[0]), np.float32)
        expanded = None if unique is None else np.empty((len(buffer), self.ntotal), np.float32)
        for start in range(0, queries.shape[0], chunk_size):
            tables = self.lookup_tables(queries[start:start + chunk_size])
            dist = _table_distances(tables, blocks, buffer[:len(tables)])
            if unique is not None:
                dist = np.take(dist, unique[1], axis=1, out=expanded[:len(tables)])
            yield start, dist

    def _chunk_size(self, chunk_size):
        if chunk_size is None:
            return max(1, _CHUNK_ELEMENTS // max(1, self.ntotal))
        return _check_positive_int("chunk_size", chunk_size)

    def distances(self, queries):
        """All distances of queries (Q, M*d) to the items -> float32 (Q, ntotal)."""
        queries = _as_matrix("queries", queries, self.dim)
        out = np.empty((queries.shape[0], self.ntotal), np.float32)
        for start, dist in self.iter_distances(queries):
            out[start:start + dist.shape[0]] = dist
        return out

    def search_positions(self, queries, k, chunk_size=None):
        """Yield (start, distances (chunk, k), positions (chunk, k)) of the top-k per query, k <= ntotal.

        Positions are insertion indices (rows of `codes` and `labels`), for evaluation.
        """
        k = _check_positive_int("k", k)
        if k > self.ntotal:
            raise ValueError(f"k={k} exceeds the {self.ntotal} items in the index")
        keys = None
        for start, dist in self.iter_distances(queries, chunk_size):
            if keys is None:
                keys = np.empty(dist.shape, np.int64)

            def rank(rows, dist=dist):
                return smallest_k(sort_keys(dist[rows], out=keys[rows]), k)

            dist, pos = _decode_keys(np.concatenate(map_rows(rank, len(dist))))
            yield start, dist, pos

    def search(self, queries, k, chunk_size=None):
        """The k nearest items of each query (Q, M*d) -> (distances float32 (Q, k), ids int64 (Q, k)).

        Ascending distance, ties by insertion order. k > ntotal pads with inf and -1, as faiss does.
        Queries go in chunks of `chunk_size` (default: ~8M distances, ~100 MB of buffers at a time).
        """
        queries = _as_matrix("queries", queries, self.dim)
        k = _check_positive_int("k", k)
        dist = np.full((queries.shape[0], k), np.inf, np.float32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        kk = min(k, self.ntotal)
        if kk:
            for start, d, pos in self.search_positions(queries, kk, chunk_size):
                dist[start:start + len(d), :kk] = d
                ids[start:start + len(d), :kk] = self._ids[pos]
        return dist, ids

    # --- faiss ------------------------------------------------------------------------------------
    def to_faiss(self):
        """The same codes in a faiss `IndexPQ` (inner product, this index's codebook as its centroids).

        faiss returns similarities s = sum_m q_m . z_m[code_m]; this index's distance is M - s, so the
        rankings agree (faiss orders equal distances its own way, not by id). Search it with
        `index.prepare_queries(q)` (identity in `original` mode). Custom ids come wrapped in a
        `faiss.IndexIDMap`. Write it with `faiss.write_index`.
        """
        import faiss

        if self.dim // self.num_subspaces == 2 and self.num_codewords < 8:
            raise ValueError("faiss' IndexPQ cannot search 2-d sub-vectors with fewer than 8 codewords "
                             f"(its dsub=2 kernel needs K % 8 == 0). Received K={self.num_codewords}")
        index = faiss.IndexPQ(self.dim, self.num_subspaces, self.nbits, faiss.METRIC_INNER_PRODUCT)
        d = self.dim // self.num_subspaces
        centroids = self._words.reshape(self.num_codewords, self.num_subspaces, d).transpose(1, 0, 2)
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), index.pq.centroids)
        index.is_trained = True
        packed = pack_codes(self._codes, self.nbits)
        if np.array_equal(self._ids, np.arange(self.ntotal)):
            if self.ntotal:
                index.add_sa_codes(packed)
            return index
        wrapped = faiss.IndexIDMap(index)  # keeps a Python reference to `index`
        wrapped.add_sa_codes(packed, self._ids)
        return wrapped

    # --- files ------------------------------------------------------------------------------------
    def save(self, path):
        """Write the index to an `.npz` file (format version 1), atomically (temporary file + rename).

        Keys: format, format_version, mode, num_subspaces, codebook float32 (K, M*d), codes uint8
        packed (N, ceil(M*log2 K / 8)), ids int64 (N,), and labels when present.
        """
        arrays = {
            "format": np.array(_FORMAT_NAME),
            "format_version": np.array(FORMAT_VERSION, np.int64),
            "mode": np.array(self.mode),
            "num_subspaces": np.array(self.num_subspaces, np.int64),
            "codebook": self.codebook,
            "codes": pack_codes(self._codes, self.nbits),
            "ids": self._ids,
        }
        if self._labels is not None:
            arrays["labels"] = self._labels
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path):
        """Read an index written by `save`; a ValueError naming the file and the key for anything else."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No index file at {path}")

        def bad(why):
            return ValueError(f"{path}: not a valid PQIndex file: {why}")

        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise bad(f"cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
        for key in ("format", "format_version", "mode", "num_subspaces", "codebook", "codes", "ids"):
            if key not in arrays:
                raise bad(f"missing key {key!r}")
        if arrays["format"].shape != () or str(arrays["format"]) != _FORMAT_NAME:
            raise bad(f"key 'format' is {arrays['format']!r}, expected {_FORMAT_NAME!r}")
        version = arrays["format_version"]
        if version.shape != () or not np.issubdtype(version.dtype, np.integer):
            raise bad(f"key 'format_version' must be an integer scalar, got {version.dtype} {version.shape}")
        if int(version) != FORMAT_VERSION:
            raise bad(f"key 'format_version' is {int(version)}; "
                      f"this gpq_keras reads version {FORMAT_VERSION}")
        mode = arrays["mode"]
        if mode.shape != () or mode.dtype.kind != "U" or str(mode) not in RETRIEVAL_MODES:
            raise bad(f"key 'mode' must be one of {RETRIEVAL_MODES}, got {mode!r}")
        m = arrays["num_subspaces"]
        if m.shape != () or not np.issubdtype(m.dtype, np.integer) or int(m) < 1:
            raise bad(f"key 'num_subspaces' must be a positive integer scalar, got {m!r}")
        codebook = arrays["codebook"]
        if codebook.dtype != np.float32 or codebook.ndim != 2:
            raise bad(f"key 'codebook' must be float32 (K, M*d), got {codebook.dtype} {codebook.shape}")
        try:
            index = cls(codebook, int(m), str(mode))
        except ValueError as exc:
            raise bad(f"key 'codebook': {exc}") from exc
        codes, ids = arrays["codes"], arrays["ids"]
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != index.code_size:
            raise bad(f"key 'codes' must be uint8 (N, {index.code_size}), got {codes.dtype} {codes.shape}")
        n = codes.shape[0]
        if ids.dtype != np.int64 or ids.shape != (n,):
            raise bad(f"key 'ids' must be int64 ({n},), got {ids.dtype} {ids.shape}")
        labels = arrays.get("labels")
        if labels is not None and (labels.ndim not in (1, 2) or labels.shape[0] != n
                                   or labels.dtype.kind not in ("biuU" if labels.ndim == 1 else "biu")):
            raise bad(f"key 'labels' must be ({n},) class ids or ({n}, classes) integer/bool multi-hot, "
                      f"got {labels.dtype} {labels.shape}")
        unpacked = unpack_codes(codes, index.num_subspaces, index.nbits)
        if n and int(unpacked.max()) >= index.num_codewords:
            raise bad(f"key 'codes' holds an index >= K={index.num_codewords}")
        index.add(unpacked, ids=ids, labels=labels)
        return index
