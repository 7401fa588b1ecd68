"""`PQIndex`, a database of GPQ codes searched by asymmetric distance: the index type that composes
the quantiser, the item store, the ranking of the codes, faiss and the file; `open_index`, and
`index_writer` for every command that rewrites an index file."""

import collections
import contextlib
import os
import re
import warnings

import numpy as np

from gpq_keras.config import check_positive_int
from gpq_keras.data.images import DEFAULT_MAX_PIXELS
from gpq_keras.files import file_lock
from gpq_keras.retrieval import faiss_bridge, io
from gpq_keras.retrieval.codes import unique_codes
from gpq_keras.retrieval.quantizer import ProductQuantizer, as_matrix
from gpq_keras.retrieval.ranking import CodeRanking
from gpq_keras.retrieval.store import ItemStore, read_only

SEARCH_BACKENDS = ("auto", "numpy", "faiss")
MAX_ITEMS = 2**30  # positions must fit the low 32 bits of a sort key
FAST_SCAN_MAX_K = 1 / 32  # fast-scan candidates pay for k <= this fraction of ntotal (measured)

AddedFiles = collections.namedtuple(
    "AddedFiles", ["added", "already_indexed", "skipped", "updated"], defaults=((),)
)
AddedFiles.__doc__ = """What `PQIndex.add_files` did: `added` (int) files added; `already_indexed`,
the paths (as given) not added because their absolute path already is a source of the index (or
came earlier in the same call), with `update` only the unchanged ones; `skipped`, (path, reason) of
the unreadable files left out with `skip_unreadable`; `updated`, with `update`, a tuple of the
paths of the changed files re-encoded in place (same id)."""


class PQIndex:
    """A database of GPQ codes searched by asymmetric distance, with faiss' `add`/`search` feel.

    ```python
    index = PQIndex.from_model(model)          # codebook and mode from the trained model
    index.add(model.encode(db_images), labels=db_labels)
    distances, ids = index.search(model.encode(query_images), k=100)
    ```

    Distances are sums of per-query look-up tables (`ProductQuantizer.lookup_tables`) over each
    item's code, computed in chunks of queries; results are ascending in distance, ties in insertion
    order.

    Args:
        codebook: float (K, M*d), the retrieval codebook: raw Z for `original`, Z' for `consistent`.
        num_subspaces: int, M.
        mode: `"original"` (default) or `"consistent"` (see `gpq_keras.retrieval`).
        class_names: optional names of the label classes (see `class_names`).

    Attributes:
        pq: the `ProductQuantizer`; `mode`, `num_subspaces`, `num_codewords`, `dim` (M*d) and
            `nbits` (log2 K) are its values.
        folder: the absolute folder of the file the index was loaded from (`load`), else None: a
            relative source (files written before sources were absolute) is resolved against it
            (`resolve_sources`).
    """

    def __init__(self, codebook, num_subspaces, mode="original", class_names=None):
        pq = self.pq = ProductQuantizer(codebook, num_subspaces, mode)
        self.mode, self.num_subspaces, self.dim = pq.mode, pq.num_subspaces, pq.dim
        self.num_codewords, self.nbits = pq.num_codewords, pq.nbits
        self.model_fingerprint = None  # `GPQ.fingerprint` of the model that made the codebook
        self.folder = None  # where the file `load` read lies: relative sources resolve against it
        self._model = None
        self._store = ItemStore(class_names)
        self._codes = np.zeros((0, self.num_subspaces), np.uint8)
        self._ranking = CodeRanking(self.pq, self._codes)

    @classmethod
    def from_model(cls, model, mode=None, class_names=None):
        """An empty index with a GPQ model's codebook: Z for `original`, Z' for `consistent`; mode
        None takes `model.gpq_config.retrieval_mode`. The model is kept for `add_images` and
        `add_files`."""
        pq = ProductQuantizer.from_model(model, mode)
        index = cls(pq.codebook, pq.num_subspaces, pq.mode, class_names=class_names)
        index._model = model
        index.model_fingerprint = model.fingerprint
        return index

    def check_model(self, model):
        """Raise a ValueError unless `model` is the one this index was built with (its
        `fingerprint`): searching with another model's features gives meaningless distances."""
        if self.model_fingerprint is not None and model.fingerprint != self.model_fingerprint:
            raise ValueError(
                f"the index was built with another model (fingerprint {self.model_fingerprint}; "
                f"this model's is {model.fingerprint}): rebuild the index with this model"
            )

    # --- contents ---------------------------------------------------------------------------------
    def reset(self):
        """Remove all items (`class_names` stay)."""
        self._codes = np.zeros((0, self.num_subspaces), np.uint8)
        self._store.reset()
        self._ranking = CodeRanking(self.pq, self._codes)

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
        return read_only(self._codes)

    @property
    def ids(self):
        """The items' ids, int64 (ntotal,) (read-only); 0..ntotal-1 unless given to `add` or
        items were removed (`remove` keeps the others' ids)."""
        return self._store.ids

    @property
    def labels(self):
        """The items' labels, (ntotal,) or (ntotal, classes), or None when none were added."""
        return self._store.labels

    @property
    def sources(self):
        """The items' sources (file paths or names), unicode (ntotal,) (read-only), or None when
        none were added."""
        return self._store.sources

    @property
    def class_names(self):
        """Names of the label classes, a list of str, or None: class id i (labels (ntotal,)) or
        multi-hot column i (labels (ntotal, classes)) is named class_names[i].

        Settable: unique non-empty strings; int labels must be in [0, len(class_names)), multi-hot
        labels must have len(class_names) columns (checked here and by every `add`).
        """
        return self._store.class_names

    @class_names.setter
    def class_names(self, names):
        self._store.class_names = names

    def __len__(self):
        return self.ntotal

    def __repr__(self):
        return (
            f"PQIndex(M={self.num_subspaces}, K={self.num_codewords}, d={self.pq.subspace_dim}, "
            f"mode={self.mode!r}, ntotal={self.ntotal})"
        )

    @property
    def file_stats(self):
        """Each source's file size in bytes and mtime in ns when it was encoded, int64 (ntotal, 2)
        (read-only; -1 where unknown: items `add` was given, or from a file older than version 4),
        or None when the index has no sources. `add_files(update=True)` compares them."""
        return self._store.file_stats

    def _as_codes(self, x):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(
                f"`x` must be codes (N, {self.num_subspaces}) or features (N, {self.dim}). "
                f"Received shape: {x.shape}"
            )
        if x.dtype == np.uint8:
            return self.pq.check_codes(x, "x")
        if np.issubdtype(x.dtype, np.floating):
            return self.pq.encode(x)
        raise ValueError(f"`x` must be uint8 codes or float features. Received dtype: {x.dtype}")

    def add(self, x, ids=None, labels=None, sources=None, file_stats=None):
        """Add items: uint8 codes (N, M), or float features (N, M*d) that are encoded first.

        Args:
            x: uint8 codes or float features.
            ids: optional int64 ids (N,) that `search` returns; default the next ids, 0, 1, ...
                past every id the index assigned (removed ones are not reused). Either every
                `add` gives ids or none does.
            labels: optional labels (N,) int or (N, classes) multi-hot, kept for evaluation; either
                every `add` gives labels or none does. With `class_names`, they must fit them.
            sources: optional N strings (N,), each item's file path or name (`sources_for`); either
                every `add` gives sources or none does.
            file_stats: optional int (N, 2), the sources' file sizes and mtimes in ns (-1:
                unknown, the default); `add_files` records them.
        """
        codes = self._as_codes(x)
        staged = self._store.stage(codes.shape[0], ids, labels, sources, file_stats)
        if self.ntotal + codes.shape[0] >= MAX_ITEMS:
            raise ValueError(
                f"PQIndex holds fewer than {MAX_ITEMS} items; use `to_faiss()` for more"
            )
        self._codes = np.concatenate([self._codes, codes])
        self._store.commit(staged)
        self._ranking = CodeRanking(self.pq, self._codes)
        return self

    def _item_positions(self, ids):
        """The positions of the items of `ids` (int array); unlike `search`'s -1 (no result), a
        negative id is not an item: a ValueError, as for any id not in the index."""
        if ids.size and np.issubdtype(ids.dtype, np.integer) and ids.min() < 0:
            raise ValueError(f"`ids` holds an id not in the index: {int(ids.min())}")
        return self._store.positions(ids)

    def remove(self, ids):
        """Remove the items of `ids` (int, any shape; repeats allowed) -> the number removed.

        The others keep their ids and order (as faiss' `IndexIDMap.remove_ids`); ids the index
        assigns later continue past the removed ones. An id not in the index (-1 included) raises
        a ValueError naming it, and nothing is removed.
        """
        positions = np.unique(self._item_positions(np.asarray(ids).reshape(-1)))
        if not len(positions):
            return 0
        keep = np.ones(self.ntotal, bool)
        keep[positions] = False
        self._codes = self._codes[keep]
        self._store.remove(positions)
        self._ranking = CodeRanking(self.pq, self._codes)
        return len(positions)

    def update(self, ids, x, file_stats=None):
        """Replace the codes of the items of `ids` (int (N,), distinct) with `x` (uint8 codes
        (N, M) or features (N, M*d)) in place: same ids, positions, labels and sources; with
        `file_stats` (N, 2) their files' stats too."""
        ids = np.asarray(ids)
        codes = self._as_codes(x)
        if ids.shape != (codes.shape[0],):
            raise ValueError(
                f"`ids` must be {codes.shape[0]} ids, one per row of `x`. Received shape: "
                f"{ids.shape}"
            )
        positions = self._item_positions(ids)
        if len(np.unique(positions)) != len(positions):
            raise ValueError("`ids` holds repeated ids")
        if file_stats is not None:
            self._store.set_file_stats(positions, file_stats)
        codes_now = self._codes.copy()
        codes_now[positions] = codes
        self._codes = codes_now
        self._ranking = CodeRanking(self.pq, self._codes)
        return self

    def ids_for_files(self, patterns, missing=False):
        """Ids of the items whose source (`resolve_sources`) lies in one of `patterns`, in position
        order -> int64 (n,).

        A pattern is a folder (its files at any depth) or file path, or a glob with `*`, `?`,
        `[...]` and `**` (any number of folders); it is made absolute against the current folder
        and matched against the stored paths, so files that no longer exist match too. With
        `missing`, only the items whose file is no longer a regular file.
        """
        if isinstance(patterns, (str, bytes, os.PathLike)):
            patterns = [patterns]
        if self.sources is None:
            raise ValueError("this index has no sources (it was not built from files)")
        sources = self.resolve_sources()
        matchers = [_path_matcher(pattern) for pattern in patterns]
        hits = [i for i, source in enumerate(sources.tolist()) if any(m(source) for m in matchers)]
        if missing:
            hits = [i for i in hits if not os.path.isfile(sources[i])]
        return self.ids[np.array(hits, np.intp)]

    def add_images(self, images, ids=None, labels=None, batch_size=500, sources=None):
        """Encode images (pixels (N, H, W, C), uint8 or float in 0..255, or an `ImageFiles`) with
        the model of `from_model` and add them."""
        model = self._needs_model("add_images")
        if not hasattr(images, "read"):  # an `ImageFiles` is read batch by batch by `encode`
            images = np.asarray(images)
        features = model.encode(images, batch_size=batch_size)
        return self.add(features, ids=ids, labels=labels, sources=sources)

    def add_files(
        self,
        paths,
        labels=None,
        chunk_size=1024,
        verbose=0,
        model=None,
        max_pixels=DEFAULT_MAX_PIXELS,
        skip_unreadable=False,
        skip_indexed=True,
        update=False,
    ):
        """Decode image files at the model's image size, encode them with the model and add them,
        `chunk_size` files at a time (bounded memory), each with its absolute path as its source
        and its file's size and mtime (`file_stats`, taken before it is read)
        -> `AddedFiles(added, already_indexed, skipped, updated)`.

        Files are read by `gpq_keras.data.images` (regular files only, each image's
        size checked against `max_pixels` before it is decoded). A source is `os.path.abspath` of
        the name as given (a name that is not UTF-8 keeps its surrogate escapes), so results open
        from any folder. A file whose absolute path already is a source (`resolve_sources`), or
        that came earlier in `paths`, is not added again (`already_indexed`).

        Args:
            paths: N image file paths (str, or bytes as the OS gives them).
            labels: optional labels (N,) or (N, classes), as `add` takes them; only the added
                files' are added.
            chunk_size: files decoded and encoded at a time.
            verbose: a `keras.utils.Progbar` of the files (its `verbose`) when non-zero.
            model: the GPQ that encodes them (for a loaded index: refused unless it built the
                index, `check_model`); default the model of `from_model`.
            max_pixels: the most pixels (width x height) an image may declare.
            skip_unreadable: leave out (and list in `skipped`) the files that cannot be read or
                decoded; by default the first such file raises (`FileFormatError` or
                FileNotFoundError naming it), the chunks before it staying added (`index_writer`
                then saves nothing).
            skip_indexed: False adds every file, already indexed or not.
            update: re-encode in place (same id, `update`) the indexed files whose size or mtime
                changed (`updated`); the unchanged ones are `already_indexed`. A file whose
                stats are unknown (indexed by a file older than version 4) is re-encoded too, and
                counts as updated only if its code changed; its stats are recorded either way.
        """
        if model is None:
            model = self._needs_model("add_files")
        else:
            self.check_model(model)
        if getattr(model, "takes_vectors", False):
            raise ValueError(
                f"add_files: the model takes embeddings (N, {model.gpq_config.input_dim}), not "
                "image files; encode the embeddings and `add` their features"
            )
        chunk_size = check_positive_int("chunk_size", chunk_size)
        import keras

        paths = [os.fsdecode(path) for path in paths]
        labels = None if labels is None else np.asarray(labels)
        if labels is not None and (labels.ndim not in (1, 2) or labels.shape[0] != len(paths)):
            raise ValueError(
                f"`labels` must have shape ({len(paths)},) or ({len(paths)}, classes). "
                f"Received shape: {labels.shape}"
            )
        absolute = [os.path.abspath(path) for path in paths]
        wanted = np.arange(len(paths))
        already, changed = [], []  # changed: (position in `paths`, id) of files to re-encode
        if skip_indexed or update:
            indexed = {}
            if self.sources is not None:
                indexed = {s: i for i, s in enumerate(self.resolve_sources().tolist())}
            seen, keep = set(), []
            for position, source in enumerate(absolute):
                if source in seen:
                    already.append(paths[position])
                elif source in indexed and update:
                    seen.add(source)
                    item = indexed[source]
                    if (self.file_stats[item] == _file_stat(source)).all() and (
                        self.file_stats[item] != -1
                    ).all():
                        already.append(paths[position])
                    else:
                        changed.append((position, item))
                elif source in indexed:
                    already.append(paths[position])
                else:
                    seen.add(source)
                    keep.append(position)
            wanted = np.array(keep, np.intp)
        if len(wanted):  # what `add` would refuse (sources, custom ids, labels), before decoding
            some = None if labels is None else labels[wanted]
            self._store.stage(len(wanted), None, some, np.zeros(len(wanted), "U1"))
        size = model.gpq_config.image_shape[:2]
        bar = None
        if verbose:
            bar = keras.utils.Progbar(
                len(wanted) + len(changed), verbose=verbose, unit_name="image"
            )
        skipped, updated = [], []
        for start in range(0, len(changed), chunk_size):  # re-encoded in place
            chunk = changed[start : start + chunk_size]
            stats = np.array([_file_stat(absolute[i]) for i, _ in chunk], np.int64)
            features, kept, bad = _encode_files(
                model, [paths[i] for i, _ in chunk], size, max_pixels, skip_unreadable
            )
            skipped.extend(bad)
            if len(kept):
                items = np.array([chunk[i][1] for i in kept], np.intp)
                codes = self.pq.encode(features)
                known = (self.file_stats[items] != -1).all(1)
                same = (codes == self._codes[items]).all(1)
                for row, i in enumerate(kept):
                    position = chunk[i][0]
                    (already if same[row] and not known[row] else updated).append(paths[position])
                self.update(self.ids[items], codes, file_stats=stats[kept])
            if bar is not None:
                bar.update(start + len(chunk))
        added = 0
        for start in range(0, len(wanted), chunk_size):
            chunk = wanted[start : start + chunk_size]
            stats = np.array([_file_stat(absolute[i]) for i in chunk], np.int64).reshape(-1, 2)
            features, kept, bad = _encode_files(
                model, [paths[i] for i in chunk], size, max_pixels, skip_unreadable
            )
            skipped.extend(bad)
            if len(kept):
                self.add(
                    features,
                    sources=[absolute[i] for i in chunk[kept]],
                    labels=None if labels is None else labels[chunk[kept]],
                    file_stats=stats[kept],
                )
                added += len(kept)
            if bar is not None:
                bar.update(len(changed) + start + len(chunk))
        return AddedFiles(added, already, skipped, tuple(updated))

    def _needs_model(self, method):
        if self._model is None:
            raise ValueError(f"{method} needs an index made by PQIndex.from_model(model)")
        return self._model

    def sources_for(self, ids):
        """The sources of `ids` as `search` returns them (int64, any shape) -> unicode array of the
        same shape, "" where the id is -1 (no result)."""
        return self._store.sources_for(ids)

    def resolve_sources(self, sources=None):
        """Absolute paths of sources -> unicode array of the same shape ("" stays ""): each
        stored string as `os.path.abspath` gives it, a relative one (files written before sources
        were absolute) joined to `folder`, the folder of the file the index was loaded from (the
        current folder for an index not loaded from a file). The one rule every reader of an
        index's files follows (search output, figures, the server).

        Args:
            sources: strings as `sources_for` returns them (any shape); default all the index's
                `sources`.
        """
        if sources is None:
            if self.sources is None:
                raise ValueError("this index has no sources; give `sources` to `add`")
            sources = self.sources
        sources = np.asarray(sources)
        if sources.dtype.kind not in "UT" and sources.size:
            raise ValueError(f"`sources` must be strings. Received dtype: {sources.dtype}")
        folder = self.folder or os.getcwd()
        resolved = [
            os.path.abspath(os.path.join(folder, source)) if source else ""
            for source in sources.ravel().tolist()
        ]
        return np.array(resolved, dtype=str).reshape(sources.shape)

    def source_paths(self, ids):
        """The absolute paths of the sources of `ids` as `search` returns them (int64, any
        shape) -> unicode array of the same shape, "" where the id is -1 (no result):
        `resolve_sources(sources_for(ids))`."""
        return self.resolve_sources(self.sources_for(ids))

    def class_names_for(self, ids):
        """The class names of the (int) labels of `ids` as `search` returns them (int64, any shape)
        -> unicode array of the same shape, "" where the id is -1 (no result)."""
        return self._store.class_names_for(ids)

    # --- distances and ranking ------------------------------------------------------------------
    def distances(self, queries):
        """All distances sum_m (1 - q_m . z_m[code_m]) of queries (Q, M*d) to the items -> float32
        (Q, ntotal).

        `original` mode uses raw queries and the raw codebook Z, as the original's `pqDist`;
        `consistent` intra-normalises both. For large databases prefer `search` or `rank`, which
        bound memory.
        """
        queries = as_matrix("queries", queries, self.dim)
        out = np.empty((queries.shape[0], self.ntotal), np.float32)
        for start, dist in self._ranking.iter_distances(queries):
            out[start : start + dist.shape[0]] = dist
        return out

    def rank(self, queries, k=None, chunk_size=None, with_distances=True):
        """Yield the top-k of each query chunk by chunk, so memory stays bounded -> `RankedChunk`s.

        Each chunk holds database positions (insertion order: rows of `codes` and `labels`), best
        first, ties by position, and with `with_distances` their distances. Its arrays may be
        buffers that the next chunk reuses: copy them to keep them.

        ```python
        result = metrics.evaluate_ranking(index.rank(queries, with_distances=False), query_labels,
                                          index.labels)
        ```

        Args:
            queries: float (Q, M*d).
            k: int in [1, ntotal]; None ranks the whole database.
            chunk_size: queries per chunk; default about 8M distances (155 queries at 54,000
                items), or 4,096 for a top-k (k < ntotal / 4) of more than 65,536 items, which
                passes over the database block by block (`search`'s NumPy path), so time stays
                linear in ntotal.
            with_distances: also decode the distances (evaluation does not need them).
        """
        if not self.ntotal:
            raise ValueError("the index is empty")
        k = self.ntotal if k is None else check_positive_int("k", k)
        if k > self.ntotal:
            raise ValueError(f"k={k} exceeds the {self.ntotal} items in the index")
        yield from self._ranking.rank(queries, k, chunk_size, with_distances)

    def search(self, queries, k, exact=True, backend="auto", chunk_size=None):
        """The k nearest items of each query (Q, M*d) -> (distances float32 (Q, k), ids int64
        (Q, k)).

        Ascending distance, ties by insertion order; k > ntotal pads with inf and -1, as faiss does.
        Time is linear in ntotal and memory bounded by a block of 65,536 items.

        Args:
            queries: float (Q, M*d).
            k: int, results per query.
            exact: True (default): the results equal brute-force asymmetric search. False with the
                faiss backend: faiss' fast-scan results as they are, with distances from 8-bit
                look-up tables (off by up to `fast_scan_error_bound`) and a warning that says so.
            backend: `"numpy"`, brute force over blocks of codes; `"faiss"`, faiss' 4-bit fast-scan
                (`IndexPQFastScan`, K=16 only) for candidates, re-ranked exactly; `"auto"`
                (default): `"faiss"` when faiss is installed and K=16, else `"numpy"`. An exact
                search for k above ntotal / 32 ranks with NumPy on either backend: fast-scan
                candidates would cost more than the full ranking.
            chunk_size: queries per chunk of the NumPy path's full ranking (small databases).
        """
        queries = as_matrix("queries", queries, self.dim)
        k = check_positive_int("k", k)
        dist = np.full((queries.shape[0], k), np.inf, np.float32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        kk = min(k, self.ntotal)
        if not kk:
            return dist, ids
        if self._backend(backend) == "faiss" and (not exact or self.fast_scan_pays(kk)):
            if not exact:
                warnings.warn(
                    "PQIndex.search(exact=False): fast-scan results, not re-ranked; distances come "
                    "from 8-bit look-up tables",
                    stacklevel=2,
                )
            dist[:, :kk], positions = self._ranking.fast_scan(queries, kk, exact)
            ids[:, :kk] = np.where(positions >= 0, self._store.ids[positions], -1)
        else:
            for chunk in self._ranking.rank(queries, kk, chunk_size):
                rows = slice(chunk.start, chunk.start + len(chunk.positions))
                dist[rows, :kk] = chunk.distances
                ids[rows, :kk] = self._store.ids[chunk.positions]
        return dist, ids

    def fast_scan_pays(self, k):
        """Whether an exact top-k by fast-scan candidates beats the NumPy ranking: k at most
        ntotal / 32 (`FAST_SCAN_MAX_K`; at 54,000 items fast-scan re-ranking took as long as the
        full ranking near k = 2,000 and twice as long at k = 3,375: `benchmarks/bench_search.py
        --dispatch`)."""
        return k <= FAST_SCAN_MAX_K * self.ntotal

    def _backend(self, backend):
        if backend not in SEARCH_BACKENDS:
            raise ValueError(f"`backend` must be one of {SEARCH_BACKENDS}. Received: {backend!r}")
        if backend == "auto":
            try:
                faiss_bridge.import_faiss()
            except ImportError:
                return "numpy"
            return "faiss" if self.nbits == 4 else "numpy"
        if backend == "faiss":
            faiss_bridge.check_fast_scan(self.pq)
        return backend

    # --- near-duplicates --------------------------------------------------------------------------
    def duplicate_labels(self, threshold=None):
        """The group of near-duplicates of each item -> intp (ntotal,), groups numbered 0, 1, ...
        in the order of their first item.

        Items with equal codes are always in one group. With `threshold` T, two items are linked
        when their symmetric distance sum_m (1 - z_m[a] . z_m[b]) (the ADC distance with one
        item's reconstruction, `pq.decode`, as the query) is <= T, and a group is a connected
        set of links (single linkage: a chain of close pairs joins). The distinct codes are
        compared all against all: time quadratic in their number, memory bounded by chunks.
        """
        n = self.ntotal
        if not n:
            return np.zeros(0, np.intp)
        distinct = unique_codes(self._codes, self.nbits)
        unique, inverse = (self._codes, np.arange(n)) if distinct is None else distinct
        if threshold is None:
            component = np.arange(len(unique))
        else:
            threshold = float(threshold)
            if not np.isfinite(threshold):
                raise ValueError(f"`threshold` must be a finite number. Received: {threshold}")
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            rows, cols = [], []
            ranking = CodeRanking(self.pq, unique)
            for start, dist in ranking.iter_distances(self.pq.decode(unique)):
                row, col = np.nonzero(dist <= threshold)
                rows.append(row + start)
                cols.append(col)
            rows, cols = np.concatenate(rows), np.concatenate(cols)
            graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), (len(unique),) * 2)
            component = connected_components(graph, directed=False)[1]
        _, first, group = np.unique(component[inverse], return_index=True, return_inverse=True)
        renumber = np.empty(len(first), np.intp)
        renumber[np.argsort(first, kind="stable")] = np.arange(len(first))
        return renumber[group.reshape(-1)]

    def duplicate_groups(self, threshold=None):
        """Groups of near-duplicates (`duplicate_labels`) of two or more items -> a list of int64
        id arrays, each in position order, the groups in the order of their first item."""
        labels = self.duplicate_labels(threshold)
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        groups = [g for g in np.split(order, bounds) if len(g) > 1]
        groups.sort(key=lambda g: g[0])
        return [self.ids[g] for g in groups]

    def search_unique(self, queries, k, threshold=None, labels=None, **search_options):
        """`search` with near-duplicates collapsed: of each group (`duplicate_labels`) only its
        best-ranked member, the list filled to k from further down -> (distances (Q, k), ids
        (Q, k)), padded with inf and -1 when fewer than k groups exist.

        Args:
            queries: float (Q, M*d).
            k: int, results per query.
            threshold: the groups' `threshold` (None: equal codes).
            labels: the groups, `duplicate_labels(threshold)`, when already made.
            **search_options: passed to `search`.
        """
        queries = as_matrix("queries", queries, self.dim)
        k = check_positive_int("k", k)
        labels = self.duplicate_labels(threshold) if labels is None else np.asarray(labels)
        if labels.shape != (self.ntotal,):
            raise ValueError(f"`labels` must have shape ({self.ntotal},). Received {labels.shape}")
        dist = np.full((len(queries), k), np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if not self.ntotal:
            return dist, ids
        want = min(k, len(np.unique(labels)))
        pending = np.arange(len(queries))
        depth = min(self.ntotal, 2 * k)
        while len(pending):
            found_dist, found_ids = self.search(queries[pending], depth, **search_options)
            groups = labels[self._store.positions(found_ids)]
            done = []
            for row, q in enumerate(pending):
                _, first = np.unique(groups[row], return_index=True)
                first = np.sort(first)[:k]
                if len(first) == want or depth == self.ntotal:
                    dist[q, : len(first)] = found_dist[row, first]
                    ids[q, : len(first)] = found_ids[row, first]
                    done.append(row)
            pending = np.delete(pending, done)
            depth = min(self.ntotal, 2 * depth)
        return dist, ids

    # --- faiss and files --------------------------------------------------------------------------
    def to_faiss(self, fast_scan=False, nlist=None, nprobe=1, train=None, seed=0):
        """The same codes in a faiss index (inner product, this index's codebook as the PQ
        centroids).

        faiss returns similarities s = sum_m q_m . z_m[code_m]; this index's distance is M - s, so
        the rankings agree (faiss orders equal distances its own way, not by id). Search it with
        `index.pq.prepare_queries(q)` (identity in `original` mode); write it with
        `write_faiss_index`. Needs the `[faiss]` extra.

        - default: `IndexPQ`, exact distances (custom ids come wrapped in a `faiss.IndexIDMap`).
        - `fast_scan=True` (K=16): `IndexPQFastScan`, distances from 8-bit look-up tables
          (approximate, see `fast_scan_error_bound`), many times faster.
        - `nlist=n` (K=16): `IndexIVFPQFastScan` for millions of items: a coarse quantiser of n
          centroids (spherical k-means, inner product) trained on `train` (features (N', M*d), e.g.
          a sample of the database's; default 64 * nlist items' reconstructions), not by residual:
          every list holds the GPQ codes unchanged, with fast-scan lists. Each item goes to the list
          whose centroid has the largest inner product with its reconstruction, which is what its
          distance is computed to; a search scans the `nprobe` best lists (`index.nprobe`,
          settable).

        Sharding: `faiss.IndexShards` searches several such indexes (each with its own ids) in one
        process, on threads or GPUs, and merges their results; shards on several machines need a
        scatter-gather in front (docs: "Search at scale").
        """
        return faiss_bridge.to_faiss(
            self.pq, self._codes, self._store.ids, fast_scan, nlist, nprobe, train, seed
        )

    def save(self, path):
        """Write the index to an `.npz` file (format version 4, or 3 when it holds nothing that
        needs 4: file stats or removed items), atomically (temporary file + rename), every key
        covered by a checksum that `load` verifies (`gpq_keras.retrieval.io`). No object arrays:
        `np.load(path, allow_pickle=False)` reads it."""
        io.write_index(self, path)

    @classmethod
    def load(cls, path):
        """Read an index written by `save` (format 1 to 4): every key, the checksum, the
        codebook's size, the ids, sources, file stats and class names are checked;
        `FileFormatError` naming the file and the key for anything wrong."""
        return io.read_index(cls, path)


def _file_stat(path):
    """(size, mtime in ns) of the file at `path`, or (-1, -1) when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


def _path_matcher(pattern):
    """A test of absolute paths for `ids_for_files`: in the folder or file `pattern` names, or
    matching it as a glob (`**`: any number of folders)."""
    pattern = os.path.abspath(os.fsdecode(pattern))
    if not re.search(r"[*?\[]", pattern):
        folder = pattern.rstrip(os.sep) + os.sep
        return lambda path: path == pattern or path.startswith(folder)
    out, i = [], 0
    while i < len(pattern):
        at_start = i == 0 or pattern[i - 1] == os.sep
        if at_start and pattern.startswith("**" + os.sep, i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if at_start and pattern[i:] == "**":
            out.append(".*")
            break
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif end > 0:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = re.sub(r"([\\^\]])", r"\\\1", body[1:] if negate else body)
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = re.compile("".join(out) + r"\Z", re.S)
    return lambda path: regex.match(path) is not None


def _encode_files(model, paths, size, max_pixels, skip_unreadable):
    """Features of image files, streamed (`ImageFiles`: each batch read while the last one
    encodes, memory bounded by the batch) -> (features, positions of the files encoded, skipped).

    Headers are checked first (`check_image_files`); a file whose pixels do not decode raises,
    or with `skip_unreadable` the files are decoded again, one batch at a time, to leave it out."""
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.images import check_image_files, read_images
    from gpq_keras.files import FileFormatError

    kept, skipped = check_image_files(paths, max_pixels, skip_unreadable)
    if not len(kept):
        return None, kept, skipped
    files = ImageFiles([paths[i] for i in kept], size, max_pixels=max_pixels)
    try:
        return model.encode(files), kept, skipped
    except (FileFormatError, FileNotFoundError):
        if not skip_unreadable:
            raise
    decoded = read_images(files.paths, size, max_pixels=max_pixels, skip_unreadable=True)
    kept = kept[decoded.kept]
    features = model.encode(decoded.images) if len(kept) else None
    return features, kept, skipped + decoded.skipped


def open_index(path, model=None, mode=None):
    """The index file at `path`: a `PQIndex` `.npz` (`check_model(model)` when a model is given), or
    the faiss file of `to_faiss` as a `FaissFileIndex` of the model's codebook in `mode` (None: the
    model's `retrieval_mode`), refused unless built with it; None for a faiss file without a model.

    FileNotFoundError ("index not found: PATH") when there is no file.
    """
    path = os.fspath(path)
    if io.is_pqindex_file(path):
        index = PQIndex.load(path)
        if model is not None:
            index.check_model(model)
        return index
    if model is None:
        return None
    pq = ProductQuantizer.from_model(model, mode)
    return faiss_bridge.read_faiss_index(path, pq, fingerprint=model.fingerprint)


@contextlib.contextmanager
def index_writer(path, wait=60.0, create=None):
    """The index file at `path` for a command that rewrites it, locked: concurrent writers take
    turns, and none loses another's items.

    ```python
    with index_writer("db.npz", wait=60) as index:  # waits for another writer, then re-reads
        index.add_files(paths, model=model)
    # saved atomically here, still inside the lock
    ```

    Takes `gpq_keras.files.file_lock(path, wait)` (the lock file `path + ".lock"`), then, inside
    the lock, reads the index (`PQIndex.load`: what the last writer saved) or, with `create`, makes
    a new one (`create()` -> PQIndex: a build, which replaces whatever the file held). On a clean
    exit of the block the index is saved (`save`: temporary file + rename, so a reader never sees
    half of one) before the lock is released; on an exception nothing is saved.

    Args:
        path: the `.npz` index file.
        wait: seconds to wait for another writer's lock, then `LockTimeout` (an OSError) whose one
            line names the file.
        create: None (the file must exist: FileNotFoundError otherwise), or a callable that returns
            the new `PQIndex` to write.
    """
    path = os.fspath(path)
    with file_lock(path, wait):
        index = PQIndex.load(path) if create is None else create()
        if not isinstance(index, PQIndex):
            raise TypeError(f"`create` must return a PQIndex. Received: {type(index).__name__}")
        yield index
        index.save(path)
