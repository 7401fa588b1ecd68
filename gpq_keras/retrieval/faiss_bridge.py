"""faiss interoperability, the one module that imports faiss: the GPQ codebook as faiss' PQ
centroids, the faiss indexes of a PQIndex's codes, and faiss index files.

faiss searches by inner product: it returns similarities s = sum_m q_m . z_m[code_m], and a GPQ
distance is M - s (`to_distances`), so the rankings agree (faiss orders equal distances its own way,
not by id). faiss is imported when first needed (`import_faiss`), never at import time.

A faiss file written by `write_faiss_index` has a sidecar, `PATH.gpq.json` (`SIDECAR_SUFFIX`): the
SHA-256 of the faiss file's bytes and of its codebook, and the model's fingerprint, which
`read_faiss_index` verifies, so a damaged file is refused, naming it, instead of searched. The
faiss file is renamed into place first, then the sidecar (each atomically); a reader that finds the
two from different writes (between the renames) looks again inside the writers' lock before it calls
the file damaged. A faiss file without a sidecar (written before, or by faiss itself) is read
unchecked, as before.
"""

import hashlib
import json
import os

import numpy as np

from gpq_keras.config import check_positive_int
from gpq_keras.files import FileFormatError, atomic_path, display_path, file_lock, write_json
from gpq_keras.retrieval.codes import pack_codes
from gpq_keras.retrieval.kernels import DB_BLOCK
from gpq_keras.retrieval.quantizer import as_matrix

TRAIN_PER_LIST = 64  # coarse k-means training vectors per inverted list (faiss warns below 39)
SIDECAR_SUFFIX = ".gpq.json"
SIDECAR_FORMAT = "gpq_keras.faiss_sidecar"
RECHECK_WAIT = 10.0  # seconds a reader waits for a writer's lock before it calls a file damaged


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


def sha256(data):
    """SHA-256 (hex) of bytes or of an array's bytes (C order)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def write_faiss_index(index, path, pq=None, fingerprint=None):
    """Write a faiss index (`PQIndex.to_faiss`) to `path` and its sidecar `path + ".gpq.json"`,
    each atomically (temporary file + rename), the faiss file first.

    The sidecar holds the SHA-256 of the faiss file's bytes and of its codebook (the centroids in
    faiss' layout, float32), the quantiser's mode and sizes and the model's fingerprint, which
    `read_faiss_index` verifies. The order matters to readers: a reader that meets the new faiss
    file with the old sidecar looks again inside the writers' lock (`gpq_keras.files.file_lock` on
    `path`, which a writer should hold around this call).

    Args:
        index: the faiss index.
        path: the faiss file.
        pq: the `ProductQuantizer` the index was made with (`PQIndex.pq`), checked against the
            index's centroids and recorded (mode, M, K); None records only the centroids.
        fingerprint: `GPQ.fingerprint` of the model (`PQIndex.model_fingerprint`), or None.
    """
    faiss = import_faiss()
    path = os.fspath(path)
    centroids = _centroids(faiss, index)  # what `read_faiss_index` checks
    if centroids is None:
        raise ValueError(
            f"write_faiss_index writes faiss indexes of PQ codes (IndexPQ, IndexPQFastScan, "
            f"IndexIVFPQFastScan). Received: {type(index).__name__}"
        )
    if pq is not None and (
        centroids.size != pq.centroids.size or not np.array_equal(centroids, faiss_centroids(pq))
    ):
        raise ValueError("write_faiss_index: the faiss index's centroids are not `pq`'s codebook")
    data = faiss.serialize_index(index).tobytes()  # hashed as written
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "faiss_file": os.path.basename(path),
        "faiss_bytes": len(data),
        "faiss_sha256": sha256(data),
        "codebook_sha256": sha256(centroids),
        "mode": None if pq is None else pq.mode,
        "num_subspaces": None if pq is None else pq.num_subspaces,
        "num_codewords": None if pq is None else pq.num_codewords,
        "model_fingerprint": fingerprint,
    }
    write_json(path + SIDECAR_SUFFIX, sidecar)


def _centroids(faiss, index):
    """The PQ centroids of a faiss index of GPQ codes, float32 (M*K*d,), or None for another
    kind."""
    inner = _unwrapped(faiss, index)
    if isinstance(inner, (faiss.IndexPQ, faiss.IndexPQFastScan, faiss.IndexIVFPQFastScan)):
        return faiss.vector_to_array(inner.pq.centroids)
    return None


def read_sidecar(path):
    """The sidecar of the faiss file `path` ({key: value}), or None when there is none;
    `FileFormatError` naming it when it is not one."""
    sidecar = os.fspath(path) + SIDECAR_SUFFIX
    if not os.path.isfile(sidecar):
        return None

    def bad(why):
        return FileFormatError(f"{display_path(sidecar)}: not a gpq faiss sidecar ({why}); damaged")

    try:
        with open(sidecar, "rb") as fh:
            value = json.loads(fh.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise bad(" ".join(f"{type(exc).__name__}: {exc}".split())) from None
    if not isinstance(value, dict) or value.get("format") != SIDECAR_FORMAT:
        raise bad(f"'format' is not {SIDECAR_FORMAT!r}")
    for key in ("faiss_sha256", "codebook_sha256"):
        if not isinstance(value.get(key), str):
            raise bad(f"no {key!r}")
    return value


def _verified_bytes(path):
    """(the faiss file's bytes, its sidecar or None): the bytes checked against the sidecar when
    there is one; `FileFormatError` ("the faiss index is damaged") when they do not match, also
    after a second look inside the writers' lock (a reader between a writer's two renames sees
    the new faiss file with the old sidecar)."""

    def read():
        sidecar = read_sidecar(path)
        with open(path, "rb") as fh:
            data = fh.read()
        return data, sidecar

    data, sidecar = read()
    if sidecar is None or sha256(data) == sidecar["faiss_sha256"]:
        return data, sidecar
    try:
        with file_lock(path, RECHECK_WAIT):
            data, sidecar = read()
    except OSError:  # no lock to take (a read-only folder) or a writer holds it: look once more
        data, sidecar = read()
    if sidecar is not None and sha256(data) != sidecar["faiss_sha256"]:
        raise FileFormatError(
            f"{display_path(path)}: the faiss index is damaged (its checksum does not match "
            f"{display_path(path + SIDECAR_SUFFIX)})"
        )
    return data, sidecar


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


def read_faiss_index(path, pq, fingerprint=None):
    """The faiss index file at `path` (`gpq index build --faiss`) as a `FaissFileIndex`, refused
    unless its centroids are `pq`'s codewords.

    With a sidecar (`write_faiss_index`) the file's bytes and codebook are verified first:
    `FileFormatError` ("PATH: the faiss index is damaged ...") when they do not match it. Then
    `FileFormatError` for a file faiss cannot read, ValueError for another codebook, or, with
    `fingerprint` (`GPQ.fingerprint`) and a sidecar that records one, for another model.
    """
    faiss = import_faiss()
    path = os.fspath(path)
    shown = display_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index not found: {shown}")
    data, sidecar = _verified_bytes(path)
    try:
        index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
    except RuntimeError as exc:
        why = (str(exc).strip().splitlines() or ["RuntimeError"])[0]
        raise FileFormatError(
            f"{shown}: neither a PQIndex .npz nor a faiss index ({why})"
        ) from None
    inner = _unwrapped(faiss, index)
    centroids = _centroids(faiss, index)
    if sidecar is not None and (
        centroids is None or sha256(centroids) != sidecar["codebook_sha256"]
    ):
        raise FileFormatError(
            f"{shown}: the faiss index is damaged (its codebook does not match "
            f"{shown}{SIDECAR_SUFFIX})"
        )
    if centroids is not None and (inner.d != pq.dim or inner.pq.M != pq.num_subspaces):
        centroids = None
    words = faiss_centroids(pq)
    if centroids is None or centroids.size != words.size or not np.allclose(centroids, words):
        raise ValueError(
            f"{shown}: the faiss index was not built with this model in {pq.mode} mode "
            "(its codebook differs); rebuild it or pass the --mode it was built with"
        )
    built_by = None if sidecar is None else sidecar.get("model_fingerprint")
    if fingerprint is not None and built_by and built_by != fingerprint:
        raise ValueError(
            f"{shown}: the faiss index was built with another model (fingerprint {built_by}; "
            f"this model's is {fingerprint}): rebuild the index with this model"
        )
    return FaissFileIndex(index, pq)
