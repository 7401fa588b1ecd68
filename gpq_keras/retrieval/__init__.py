"""Product-quantisation codes and asymmetric search with a learned GPQ codebook (NumPy, faiss
export).

Shapes: N = database items, Q = queries, M = `num_subspaces` (codebooks), K = `num_codewords` per
codebook, d = `subspace_dim`, D = M * d the feature length. A code is one codeword index per
codebook, stored as uint8 (N, M) and packable to M * log2(K) bits.

Two retrieval modes (`gpq_keras.config.RETRIEVAL_MODES`):

- `"original"`, exactly what the original release does (`utils/RetrievalTest.py`): a database
  feature is coded with the codeword of the largest dot product between its raw sub-vector and the
  intra-normalised raw codebook Z; the distance of a raw, un-normalised query q to an item is
  sum_m (1 - q_m . Z_m[code_m]) with the raw Z.
- `"consistent"`, with the codebook training quantises with, Z' = SA(intra_norm(C), Z)
  (intra-normalised), intra-normalised queries and the same distance sum_m (1 - q_m . Z'_m[code_m]).

In both modes codes are assigned against the intra-normalised codebook: the modes differ in the
codebook given (Z or Z') and in how queries are treated.

Ranking is by ascending distance; ties are broken by database position (insertion order), lower
first, so results are deterministic. (The original used NumPy's unstable `argsort`, whose order
among equal distances is unspecified.) Each distinct code's distance is computed once per query, so
items with equal codes always get bit-identical distances and tie; the float32 sum itself comes from
one matrix product (look-up tables x one-hot codes), whose last bit may depend on the BLAS and the
batch shape.

Modules, along faiss' seams:

- `quantizer`: `ProductQuantizer`, the codebook side (codes, look-up tables; faiss' `pq`).
- `codes`: code packing in faiss' bit layout.
- `kernels`: distances and top-k as pure functions of (tables, codes, k).
- `fast_scan`: the error bound of faiss' 4-bit fast-scan and the exact re-rank of its candidates.
- `faiss_bridge`: the one module that imports faiss: faiss indexes of the codes and faiss files.
- `ranking`: the codes of an index ranked for queries (NumPy, or fast-scan re-ranked), with what it
  derives from them kept between searches.
- `store`: ids, labels, sources and class names of the items.
- `index`: `PQIndex`, the database of codes that ranks items for queries (`search`, or `rank` chunk
  by chunk for evaluation with `gpq_keras.metrics.evaluate_ranking`); `open_index`; `index_writer`,
  the locked read-modify-write of an index file that concurrent writers share.
- `lookup`: search results as records (rank, id, distance, source, class), the JSON of
  `gpq search --json` and `gpq serve`.
- `io`: the `.npz` index file (format versions 1 to 4, checksum).

Files: an index file is replaced atomically (temporary file + rename), so a reader never sees half
of one; every writer goes through `index_writer` (a lock on `PATH.lock`, the index re-read inside
it). Sources of image files are absolute paths; `PQIndex.resolve_sources` / `source_paths` resolve
a relative one (older files) against the index file's folder. A faiss file written by
`write_faiss_index` has a sidecar `PATH.gpq.json` with its checksums, which `read_faiss_index`
verifies.

Importing this package imports NumPy only; faiss, Keras and TensorFlow load when first needed.
"""

from gpq_keras.retrieval.codes import code_size, pack_codes, unpack_codes
from gpq_keras.retrieval.faiss_bridge import (
    FaissFileIndex,
    import_faiss,
    read_faiss_index,
    write_faiss_index,
)
from gpq_keras.retrieval.fast_scan import fast_scan_error_bound
from gpq_keras.retrieval.index import (
    SEARCH_BACKENDS,
    AddedFiles,
    PQIndex,
    index_writer,
    open_index,
)
from gpq_keras.retrieval.io import FORMAT_VERSION, checksum, is_pqindex_file
from gpq_keras.retrieval.kernels import smallest_k, sort_keys
from gpq_keras.retrieval.lookup import lookups
from gpq_keras.retrieval.quantizer import ProductQuantizer, intra_normalize_np
from gpq_keras.retrieval.ranking import RankedChunk

__all__ = [
    "FORMAT_VERSION",
    "AddedFiles",
    "SEARCH_BACKENDS",
    "FaissFileIndex",
    "PQIndex",
    "ProductQuantizer",
    "RankedChunk",
    "checksum",
    "code_size",
    "fast_scan_error_bound",
    "import_faiss",
    "index_writer",
    "intra_normalize_np",
    "is_pqindex_file",
    "lookups",
    "open_index",
    "pack_codes",
    "read_faiss_index",
    "smallest_k",
    "sort_keys",
    "unpack_codes",
    "write_faiss_index",
]
