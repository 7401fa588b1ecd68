"""faiss interoperability, the one module that imports faiss: the GPQ codebook as faiss' PQ
centroids, the faiss indexes of a PQIndex's codes, and faiss index files.

faiss searches by inner product: it returns similarities s = sum_m q_m . z_m[code_m], and a GPQ
distance is M - s (`to_distances`), so the rankings agree (faiss orders equal distances its own way,
not by id). faiss is imported when first needed (`import_faiss`), never at import time.
"""

import os

import numpy as np

from gpq_keras.config import check_positive_int
from gpq_keras.files import FileFormatError, atomic_path
from gpq_keras.retrieval.codes import pack_codes
from gpq_keras.retrieval.kernels import DB_BLOCK
from gpq_keras.retrieval.quantizer import as_matrix

TRAIN_PER_LIST = 64  # coarse k-means training vectors per inverted list (faiss warns below 39)


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


def faiss_centroids(pq):
    """The codewords distances use, in faiss' centroid layout (M, K, d), flat float32 (M*K*d,)."""
    return np.ascontiguousarray(pq.centroids, np.float32).ravel()


def to_distances(similarities, num_subspaces, dtype=np.float32):
    """GPQ distances M - s of faiss' inner-product similarities s, as `dtype`."""
    return dtype(num_subspaces) - np.asarray(similarities).astype(dtype)


def check_fast_scan(pq):
    """faiss, and a ValueError unless the quantiser has K=16 codewords (4-bit fast-scan)."""
    faiss = import_faiss()
    if pq.nbits != 4:
        raise ValueError(
            f"the faiss backend is 4-bit fast-scan: it needs K=16 codewords, this index "
            f"has K={pq.num_codewords}; use backend='numpy'"
        )
    return faiss


def index_pq(pq, codes=None):
    """A faiss `IndexPQ` (inner product) with the quantiser's codewords as its centroids, holding
    `codes` uint8 (N, M) by position (ids 0..N-1), or empty (None)."""
    faiss = import_faiss()
    if pq.subspace_dim == 2 and pq.num_codewords < 8:
        raise ValueError(
            "faiss' IndexPQ cannot search 2-d sub-vectors with fewer than 8 codewords "
            f"(its dsub=2 kernel needs K % 8 == 0). Received K={pq.num_codewords}"
        )
    index = faiss.IndexPQ(pq.dim, pq.num_subspaces, pq.nbits, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(faiss_centroids(pq), index.pq.centroids)
    index.is_trained = True
    if codes is not None and len(codes):
        index.add_sa_codes(pack_codes(codes, pq.nbits))
    return index


def fast_scan_index(pq, codes):
    """A faiss `IndexPQFastScan` (K=16) of codes uint8 (N, M), by position."""
    faiss = check_fast_scan(pq)
    return faiss.IndexPQFastScan(index_pq(pq, codes), 32)


def fast_scan_search(index, num_subspaces):
    """`search(queries, n)` -> (approximate distances float64 (Q, n), positions int64 (Q, n)) of a
    fast-scan `index` searched with prepared queries: what `fast_scan.rerank` takes."""

    def search(queries, n):
        similarities, positions = index.search(queries, n)
        return to_distances(similarities, num_subspaces, np.float64), positions

    return search


def add_reconstructions(index, pq, codes, ids, block_size=DB_BLOCK):
    """Add items to a faiss index that codes its input, as their reconstructions with their ids:
    each codeword's nearest codeword is itself, so the index keeps the items' codes (or, for
    codewords that are duplicated, an equal one)."""
    for start in range(0, len(codes), block_size):
        block = slice(start, start + block_size)
        index.add_with_ids(pq.decode(codes[block]), ids[block])


def to_faiss(pq, codes, ids, fast_scan=False, nlist=None, nprobe=1, train=None, seed=0):
    """`PQIndex.to_faiss` of a quantiser, codes uint8 (N, M) and ids int64 (N,) (see there)."""
    faiss = import_faiss()
    if nlist is None:
        custom_ids = not np.array_equal(ids, np.arange(len(ids)))
        index = index_pq(pq, None if custom_ids else codes)
        if fast_scan:
            check_fast_scan(pq)
            index = faiss.IndexPQFastScan(index, 32)
        if not custom_ids:
            return index
        wrapped = faiss.IndexIDMap(index)  # keeps a Python reference to `index`
        if fast_scan:  # fast-scan codes its input: the reconstructions give back the codes
            add_reconstructions(wrapped, pq, codes, ids)
        else:
            wrapped.add_sa_codes(pack_codes(codes, pq.nbits), ids)
        return wrapped
    check_fast_scan(pq)
    nlist = check_positive_int("nlist", nlist)
    nprobe = check_positive_int("nprobe", nprobe)
    if train is None:
        sample = np.random.default_rng(seed).permutation(len(codes))[: TRAIN_PER_LIST * nlist]
        train = pq.decode(codes[np.sort(sample)])
    else:
        train = pq.prepare_queries(as_matrix("train", train, pq.dim))
    if len(train) < nlist:
        raise ValueError(f"nlist={nlist} needs at least {nlist} training vectors; got {len(train)}")
    quantizer = faiss.IndexFlatIP(pq.dim)
    index = faiss.IndexIVFPQFastScan(
        quantizer, pq.dim, nlist, pq.num_subspaces, pq.nbits, faiss.METRIC_INNER_PRODUCT, 32
    )
    index.by_residual = False
    index.cp.seed = seed
    index.cp.spherical = (
        True  # unit centroids: the largest inner product picks the nearest direction
    )
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    index.train(
        train
    )  # the coarse quantiser; the PQ it also trains is replaced by the GPQ codebook
    faiss.copy_array_to_vector(faiss_centroids(pq), index.pq.centroids)
    add_reconstructions(index, pq, codes, ids)
    index.nprobe = min(nprobe, nlist)
    return index


def write_faiss_index(index, path):
    """Write a faiss index (`PQIndex.to_faiss`) to `path` atomically (temporary file + rename)."""
    faiss = import_faiss()
    with atomic_path(path) as tmp:
        faiss.write_index(index, tmp)


class FaissFileIndex:
    """A faiss index of GPQ codes (`IndexPQ`, `IndexPQFastScan` or `IndexIVFPQFastScan`, possibly
    in an `IndexIDMap`) searched like a `PQIndex`: raw queries in, distances M - s out.

    ```python
    index = read_faiss_index("db.faiss", ProductQuantizer.from_model(model))
    distances, ids = index.search(model.encode(images), k=10)
    ```

    Args:
        index: the faiss index.
        pq: the `ProductQuantizer` it was built with (its mode prepares the queries).

    Attributes:
        ntotal: int, items in the index. inverted: whether it is an inverted file (`nprobe`).
        sources, labels, class_names: None (a faiss file keeps codes and ids only).
    """

    sources = labels = class_names = None

    def __init__(self, index, pq):
        faiss = import_faiss()
        self.index, self.pq = index, pq
        self.inverted = isinstance(_unwrapped(faiss, index), faiss.IndexIVFPQFastScan)
        self.ntotal = int(index.ntotal)

    def __repr__(self):
        return f"FaissFileIndex({type(self.index).__name__}, {self.pq!r}, ntotal={self.ntotal})"

    def search(self, queries, k, nprobe=None):
        """The k nearest items of queries (Q, M*d) -> (distances float32 (Q, k), ids int64 (Q, k)),
        -1 where faiss finds fewer; `nprobe` first sets the lists an inverted file scans."""
        if nprobe is not None:
            self.index.nprobe = nprobe
        similarities, ids = self.index.search(self.pq.prepare_queries(queries), k)
        return to_distances(similarities, self.pq.num_subspaces), ids


def _unwrapped(faiss, index):
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def read_faiss_index(path, pq):
    """The faiss index file at `path` (`gpq index build --faiss`) as a `FaissFileIndex`, refused
    unless its centroids are `pq`'s codewords: `FileFormatError` for a file faiss cannot read,
    ValueError for another codebook."""
    faiss = import_faiss()
    path = os.fspath(path)
    try:
        index = faiss.read_index(path)
    except RuntimeError as exc:
        raise FileFormatError(
            f"{path}: neither a PQIndex .npz nor a faiss index ({str(exc).strip().splitlines()[0]})"
        ) from None
    inner = _unwrapped(faiss, index)
    centroids = None
    kinds = (faiss.IndexPQ, faiss.IndexPQFastScan, faiss.IndexIVFPQFastScan)
    if isinstance(inner, kinds) and inner.d == pq.dim and inner.pq.M == pq.num_subspaces:
        centroids = faiss.vector_to_array(inner.pq.centroids)
    words = faiss_centroids(pq)
    if centroids is None or centroids.size != words.size or not np.allclose(centroids, words):
        raise ValueError(
            f"{path}: the faiss index was not built with this model in {pq.mode} mode "
            "(its codebook differs); rebuild it or pass the --mode it was built with"
        )
    return FaissFileIndex(index, pq)
