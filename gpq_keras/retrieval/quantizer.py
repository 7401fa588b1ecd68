"""The codebook side of PQ (faiss' `impl/ProductQuantizer.h`): codes of features, look-up tables.

Shapes: N items, Q queries, M = `num_subspaces`, K = `num_codewords`, d = `subspace_dim`, D = M * d.
"""

import math

import numpy as np

from gpq_keras.config import L2_EPSILON, check_mode, check_num_codewords, check_positive_int
from gpq_keras.retrieval.codes import code_size
from gpq_keras.retrieval.kernels import CHUNK_ELEMENTS


def as_matrix(name, x, dim=None):
    """A finite float32 (N, dim) array; a ValueError naming `name` otherwise."""
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


def split_subspaces(x, num_subspaces):
    """(N, M*d) -> (N, M, d)."""
    return x.reshape(x.shape[0], num_subspaces, x.shape[1] // num_subspaces)


def intra_normalize_np(x, num_subspaces):
    """L2-normalise each of the M sub-vectors of x (N, M*d) separately -> float32 (N, M*d).

    The NumPy twin of `gpq_keras.layers.intra_normalize` (the same `L2_EPSILON` floor).
    """
    x = np.asarray(x, dtype=np.float32)
    parts = split_subspaces(x, num_subspaces)
    sq = np.einsum("nmd,nmd->nm", parts, parts)[..., None]
    return (parts / np.sqrt(np.maximum(sq, L2_EPSILON))).reshape(x.shape)


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


class ProductQuantizer:
    """A learned GPQ codebook as a product quantiser: codes of features, look-up tables of queries.

    ```python
    pq = ProductQuantizer(model.refined_codebook, num_subspaces=12, mode="consistent")
    codes = pq.encode(features)          # uint8 (N, M)
    tables = pq.lookup_tables(queries)   # float32 (Q, M, K), T[q, m, k] = 1 - q_m . z_mk
    ```

    Codes are assigned against the intra-normalised codebook (`assignment_codebook`); distances use
    `words`: the raw Z in `"original"` mode, intra_norm(Z') in `"consistent"` mode.

    Args:
        codebook: float (K, M*d): the raw Z for `"original"`, Z' for `"consistent"`.
        num_subspaces: int, M.
        mode: `"original"` (default) or `"consistent"` (see `gpq_keras.retrieval`).
    """

    def __init__(self, codebook, num_subspaces, mode="original"):
        self.mode = check_mode(mode)
        self.num_subspaces = check_positive_int("num_subspaces", num_subspaces)
        self.codebook = as_matrix("codebook", codebook)
        self.num_codewords, self.dim = self.codebook.shape
        if self.dim % self.num_subspaces:
            raise ValueError(
                f"The codebook's width ({self.dim}) must be divisible by "
                f"num_subspaces={self.num_subspaces}. "
                f"Received codebook shape: {self.codebook.shape}"
            )
        try:
            check_num_codewords(self.num_codewords, "codebook rows")
        except ValueError as exc:
            raise ValueError(f"{exc}. Received codebook shape: {self.codebook.shape}") from None
        self.subspace_dim = self.dim // self.num_subspaces
        self.nbits = int(math.log2(self.num_codewords))
        normalized = intra_normalize_np(self.codebook, self.num_subspaces)
        self.words = normalized if mode == "consistent" else self.codebook  # what distances use
        self._assign = split_subspaces(normalized, self.num_subspaces).transpose(1, 2, 0)

    @classmethod
    def from_model(cls, model, mode=None):
        """The quantiser of a GPQ model in `mode` (None: `model.gpq_config.retrieval_mode`): the
        raw Z for `original`, Z' = SA(intra_norm(C), Z) for `consistent`."""
        mode = check_mode(model.gpq_config.retrieval_mode if mode is None else mode)
        codebook = model.codebook if mode == "original" else model.refined_codebook
        return cls(codebook, model.gpq_config.num_subspaces, mode)

    def __repr__(self):
        return (
            f"ProductQuantizer(M={self.num_subspaces}, K={self.num_codewords}, "
            f"d={self.subspace_dim}, mode={self.mode!r})"
        )

    @property
    def code_size(self):
        """Bytes per packed code, ceil(M * log2(K) / 8)."""
        return code_size(self.num_subspaces, self.nbits)

    @property
    def assignment_codebook(self):
        """The intra-normalised codebook codes are assigned against, float32 (M, d, K) (read-only):
        code_m of x is argmax_k x_m . assignment_codebook[m, :, k]."""
        return _read_only(self._assign)

    @property
    def centroids(self):
        """The codewords distances use (`words`) per sub-space, float32 (M, K, d) (read-only):
        faiss' centroid layout, centroids[m, k] = z_mk."""
        return _read_only(split_subspaces(self.words, self.num_subspaces).transpose(1, 0, 2))

    def encode(self, features):
        """Codes of features (N, M*d): per sub-space, the codeword of largest dot product with the
        intra-normalised codebook -> uint8 (N, M).

        This is the original's `Indexing` (raw features against intra_norm(Z)); intra-normalising
        the features would not change the arg-max. Among equal dot products the lowest index wins.
        """
        features = as_matrix("features", features, self.dim)
        codes = np.empty((features.shape[0], self.num_subspaces), np.uint8)
        step = max(1, CHUNK_ELEMENTS // (self.num_subspaces * self.num_codewords))
        for start in range(0, features.shape[0], step):
            block = split_subspaces(features[start : start + step], self.num_subspaces)
            codes[start : start + step] = (
                np.matmul(block.transpose(1, 0, 2), self._assign).argmax(-1).T
            )
        return codes

    def decode(self, codes):
        """The reconstructions of codes (N, M): each sub-vector the codeword distances use (`words`)
        -> float32 (N, M*d)."""
        codes = self.check_codes(codes)
        words = split_subspaces(self.words, self.num_subspaces)  # (K, M, d)
        return words[codes, np.arange(self.num_subspaces)].reshape(codes.shape[0], self.dim)

    def prepare_queries(self, queries):
        """Queries as this mode compares them: raw (`original`) or intra-normalised (`consistent`),
        float32 (Q, M*d)."""
        queries = as_matrix("queries", queries, self.dim)
        if self.mode == "consistent":
            return intra_normalize_np(queries, self.num_subspaces)
        return queries

    def lookup_tables(self, queries):
        """T[q, m, k] = 1 - q_m . z_mk for queries (Q, M*d) -> float32 (Q, M, K).

        `original`: raw queries, raw codebook. `consistent`: both intra-normalised.
        """
        queries = split_subspaces(self.prepare_queries(queries), self.num_subspaces)
        return np.float32(1.0) - np.einsum(
            "qmd,kmd->qmk", queries, split_subspaces(self.words, self.num_subspaces)
        )

    def check_codes(self, codes, name="codes"):
        """`codes` as contiguous uint8 (N, M) codeword indices < K; a ValueError naming `name`
        otherwise."""
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
