"""Retrieval metrics: mAP as the original computes it, precision@k, precision-recall; vectorised,
chunked.

The metrics consume rankings: int database positions (rows of `db_labels`), best first, either a
whole array (Q, n) or chunks of queries as `PQIndex.rank` yields them, so a large evaluation never
holds the whole ranking:

```python
result = evaluate_ranking(index.rank(queries, with_distances=False), query_labels, index.labels)
```

Labels are int class ids (N,) (relevant = same class) or multi-hot (N, classes) (relevant = at least
one shared class), see `gpq_keras.data.labels`.

Average precision is the original's `cat_apcal`: walk the top N of a ranked list; at each relevant
rank j (1-based) add (relevant items so far) / j; AP is that sum over the relevant items found in
the top N (not over all relevant items in the database), and 0 for a query with none. mAP is the
mean over all queries, those with no relevant item included.
"""

import numpy as np

from gpq_keras.data.labels import check_label_pair, relevance
from gpq_keras.parallel import map_rows

_CHUNK_ELEMENTS = 1 << 21  # ranked items scored at once when a whole ranking array is given

__all__ = [
    "average_precision",
    "codeword_entropy",
    "codeword_usage",
    "default_cutoffs",
    "evaluate_ranking",
    "mean_average_precision",
    "precision_at_k",
    "precision_recall_curve",
    "ranked_relevance",
    "relevance",
    "usage_entropy",
]


class _Labels:
    """Query and database labels coded for fast relevance of ranked items (`data.labels.relevance`
    restricted to the ranked positions): int class ids in the smallest int dtype, multi-hot labels
    of at most 64 classes as bit sets (uint8 to uint64), wider multi-hot labels as 0/1 float32
    rows."""

    def __init__(self, query_labels, db_labels):
        query_labels, db_labels = check_label_pair(query_labels, db_labels)
        self.num_queries, self.num_db = len(query_labels), len(db_labels)
        if query_labels.ndim == 1:
            self.kind = "ids"
            if (
                np.issubdtype(query_labels.dtype, np.integer)
                and np.issubdtype(db_labels.dtype, np.integer)
                and query_labels.size
                and db_labels.size
            ):
                low, high = (
                    min(query_labels.min(), db_labels.min()),
                    max(query_labels.max(), db_labels.max()),
                )
                dtype = np.result_type(np.min_scalar_type(low), np.min_scalar_type(high))
                query_labels, db_labels = query_labels.astype(dtype), db_labels.astype(dtype)
        elif query_labels.shape[1] <= 64:
            self.kind = "bits"
            query_labels, db_labels = self._bits(query_labels), self._bits(db_labels)
        else:
            self.kind = "rows"
        self.query, self.db = query_labels, db_labels
        self.width = 1 if self.kind != "rows" else db_labels.shape[1]  # values per ranked item

    @staticmethod
    def _bits(multi_hot):
        """Multi-hot rows (N, C <= 64) as bit sets in the smallest unsigned int that holds C
        bits."""
        packed = np.packbits(multi_hot != 0, axis=1, bitorder="little")
        size = next(n for n in (1, 2, 4, 8) if n >= packed.shape[1])
        padded = np.zeros((len(packed), size), np.uint8)
        padded[:, : packed.shape[1]] = packed
        return padded.view(f"<u{size}")[:, 0]

    def ranked(self, rows, positions):
        """bool (r, n): relevance of the items at `positions` (r, n) to queries `rows`."""
        query = self.query[rows]
        if self.kind == "ids":
            return self.db[positions] == query[:, None]
        if self.kind == "bits":
            return (self.db[positions] & query[:, None]) != 0
        out = np.empty(positions.shape, bool)  # wide multi-hot: a few MB of gathered rows at a time
        step = max(1, _CHUNK_ELEMENTS // max(1, positions.shape[1] * self.width))
        for s in range(0, len(positions), step):
            out[s : s + step] = (
                np.einsum("qnc,qc->qn", self.db[positions[s : s + step]], query[s : s + step]) > 0
            )
        return out

    def num_relevant(self, rows):
        """int (r,): relevant items in the whole database for queries `rows`."""
        query = self.query[rows]
        if self.kind == "ids":
            return (self.db[None, :] == query[:, None]).sum(1)
        if self.kind == "bits":
            return ((self.db[None, :] & query[:, None]) != 0).sum(1)
        return ((query @ self.db.T) > 0).sum(1)


def ranked_relevance(ranking, query_labels, db_labels):
    """Relevance of the items of each ranked list (Q, n) -> bool (Q, n)."""
    labels = _Labels(query_labels, db_labels)
    ranking = _check_positions(ranking, labels.num_queries, labels.num_db)
    return labels.ranked(slice(0, len(ranking)), ranking)


def average_precision(ranked_relevance):
    """AP of each ranked list (the original's definition) from bool relevance in ranked order (Q, n)
    -> float64 (Q,); 0 for a list with no relevant item."""
    rel = np.asarray(ranked_relevance, bool)
    if rel.ndim != 2:
        raise ValueError(f"`ranked_relevance` must have shape (Q, n). Received shape: {rel.shape}")
    flat = np.flatnonzero(rel)
    rows, cols = np.divmod(flat, rel.shape[1])
    counts = np.bincount(rows, minlength=rel.shape[0])
    first = np.cumsum(counts) - counts
    hits = np.arange(1, len(rows) + 1) - first[rows]  # relevant items so far, at each relevant rank
    sums = np.bincount(rows, weights=hits / (cols + 1.0), minlength=rel.shape[0])
    return sums / np.maximum(counts, 1)


def default_cutoffs(n, num=100):
    """List lengths for a precision-recall curve: ~`num` linear and ~`num`/2 geometric points in
    [1, n]."""
    points = np.concatenate([np.linspace(1, n, num), np.geomspace(1, n, num // 2)])
    return np.unique(np.clip(np.round(points), 1, n).astype(np.int64))


def _check_positions(positions, num_queries, num_db, start=0, values=True):
    """`positions` as an int array (queries, n) of the given queries; `values`: also check the
    range."""
    positions = np.asarray(positions)
    if positions.ndim != 2 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(
            f"a ranking must be int database positions (queries, n). "
            f"Received: {positions.dtype} {positions.shape}"
        )
    if start + len(positions) > num_queries:
        raise ValueError(
            f"the ranking holds queries up to {start + len(positions)}, "
            f"but there are {num_queries} query labels"
        )
    if values and positions.size and (positions.min() < 0 or positions.max() >= num_db):
        raise ValueError(
            f"a ranking must hold database positions in [0, {num_db}); it holds "
            f"{positions.min()}..{positions.max()} (-1 is search's padding for k > ntotal)"
        )
    return positions


def _check_k(value, width, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 1 <= value <= width
    ):
        raise ValueError(
            f"`{name}` must be an int in [1, {width}] (the ranked list's length). "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_cutoffs(cutoffs, width):
    if cutoffs is None:
        return default_cutoffs(width)
    cutoffs = np.asarray(cutoffs)
    if (
        cutoffs.ndim != 1
        or not np.issubdtype(cutoffs.dtype, np.integer)
        or not len(cutoffs)
        or cutoffs.min() < 1
        or cutoffs.max() > width
    ):
        raise ValueError(f"`cutoffs` must be ints in [1, {width}]. Received: {cutoffs!r}")
    return cutoffs.astype(np.int64)


class _Scores:
    """Running sums of one evaluation: AP per query, hits at each k, precision-recall sums."""

    def __init__(self, labels, top_k, ks, cutoffs):
        self.labels, self.top_k, self.ks, self.cutoffs = labels, top_k, ks, cutoffs
        self.ap = np.zeros(labels.num_queries)
        self.seen = np.zeros(labels.num_queries, bool)
        self.hits = {k: 0 for k in ks}
        self.curve = (
            [np.zeros(len(cutoffs)), np.zeros(len(cutoffs)), 0] if cutoffs is not None else None
        )

    def add(self, start, positions):
        """Score the ranked lists of queries start .. start + len(positions) - 1."""
        labels = self.labels
        positions = _check_positions(
            positions, labels.num_queries, labels.num_db, start, values=False
        )
        if positions.shape[1] < self.top_k:
            raise ValueError(
                f"a ranking of {positions.shape[1]} items per query cannot give top_k={self.top_k}"
            )
        rows = slice(start, start + len(positions))
        if self.seen[rows].any():
            raise ValueError(f"queries {start}..{rows.stop - 1} are ranked twice")
        self.seen[rows] = True

        def score(part):  # on the row threads, the range check included
            queries = slice(start + part.start, start + part.stop)
            ranked = _check_positions(
                positions[part, : self.top_k], labels.num_queries, labels.num_db
            )
            rel = labels.ranked(queries, ranked)
            counts = [np.count_nonzero(rel[:, :k]) for k in self.ks]
            sums = None
            if self.cutoffs is not None:
                num_relevant = labels.num_relevant(queries)
                keep = num_relevant > 0  # recall is undefined without relevant items
                found = np.cumsum(rel[keep], axis=1, dtype=np.int64)[:, self.cutoffs - 1]
                sums = (
                    (found / self.cutoffs).sum(0),
                    (found / num_relevant[keep, None]).sum(0),
                    int(keep.sum()),
                )
            return average_precision(rel), counts, sums

        parts = map_rows(score, len(positions))
        self.ap[rows] = np.concatenate([part[0] for part in parts])
        for _, counts, sums in parts:
            for k, count in zip(self.ks, counts):
                self.hits[k] += count
            if sums is not None:
                self.curve = [total + new for total, new in zip(self.curve, sums)]

    def result(self):
        if not self.seen.all():
            missing = np.flatnonzero(~self.seen)
            raise ValueError(
                f"the ranking covers {self.seen.sum()} of {len(self.seen)} queries "
                f"(first missing: {missing[0]})"
            )
        num = max(len(self.ap), 1)
        out = {
            "mAP": float(self.ap.mean()) if len(self.ap) else 0.0,
            "ap": self.ap,
            "top_k": self.top_k,
            "precision": {k: self.hits[k] / (k * num) for k in self.ks},
        }
        if self.curve is not None:
            count = max(self.curve[2], 1)
            out["curve"] = {
                "precision": self.curve[0] / count,
                "recall": self.curve[1] / count,
                "cutoffs": self.cutoffs,
            }
        return out


def evaluate_ranking(
    ranking,
    query_labels,
    db_labels,
    top_k=None,
    precision_at=(10, 100, 1000),
    curve=False,
    cutoffs=None,
):
    """Score rankings: mAP over the top_k, precision@k and optionally the precision-recall curve.

    Args:
        ranking: int database positions (Q, n), best first, or an iterable of chunks `(start,
            positions)` covering every query once (e.g. `PQIndex.rank(..., with_distances=False)`).
        query_labels: (Q,) int or (Q, classes) multi-hot.
        db_labels: (N,) int or (N, classes) multi-hot, the labels of the ranked positions.
        top_k: mAP over the top_k (default: the whole ranked list, the whole database for full
            rankings).
        precision_at: list lengths for precision@k (those > top_k are skipped).
        curve: also compute the precision-recall curve over the top_k; recall counts every relevant
            item in `db_labels`, and queries with none are left out of the curve.
        cutoffs: the curve's list lengths, ints in [1, top_k]; default `default_cutoffs(top_k)`.

    Returns:
        dict with "mAP" (float), "ap" (float64 (Q,)), "top_k", "precision" ({k: float}), and with
        `curve` a "curve" dict of "precision", "recall", "cutoffs" arrays.
    """
    labels = _Labels(query_labels, db_labels)
    if isinstance(ranking, np.ndarray):
        ranking = _array_chunks(ranking, labels.width)
    scores = None
    for chunk in ranking:
        start, positions = int(chunk[0]), np.asarray(chunk[1])
        if scores is None:
            width = positions.shape[1] if positions.ndim == 2 else 0
            top = width if top_k is None else _check_k(top_k, width, "top_k")
            ks = sorted({int(k) for k in precision_at if 1 <= int(k) <= top})
            scores = _Scores(labels, top, ks, _check_cutoffs(cutoffs, top) if curve else None)
        scores.add(start, positions)
    if scores is None:
        if labels.num_queries:
            raise ValueError("the ranking is empty")
        return {"mAP": 0.0, "ap": np.zeros(0), "top_k": top_k, "precision": {}}
    return scores.result()


def _array_chunks(ranking, width=1):
    """(start, rows) chunks of a whole ranking array, a few MB of relevance at a time (`width` label
    values per ranked item)."""
    if ranking.ndim != 2:
        return [(0, ranking)]  # refused with a clear message by the first check
    step = max(1, _CHUNK_ELEMENTS // max(1, ranking.shape[1] * width))
    return [
        (start, ranking[start : start + step]) for start in range(0, max(len(ranking), 1), step)
    ]


def mean_average_precision(ranking, query_labels, db_labels, top_k=None):
    """mAP over the top_k of each ranked list (Q, n) (default: the whole list, e.g. the whole
    database)."""
    return evaluate_ranking(
        np.asarray(ranking), query_labels, db_labels, top_k=top_k, precision_at=()
    )["mAP"]


def precision_at_k(ranking, query_labels, db_labels, k):
    """Mean over queries of (relevant items among the first k) / k, for rankings (Q, n)."""
    ranking = np.asarray(ranking)
    k = _check_k(k, ranking.shape[1] if ranking.ndim == 2 else 0, "k")
    return evaluate_ranking(ranking, query_labels, db_labels, top_k=k, precision_at=(k,))[
        "precision"
    ][k]


def precision_recall_curve(ranking, query_labels, db_labels, cutoffs=None):
    """Mean precision and recall of the first c items of each ranked list (Q, n), for each cutoff c.

    Recall counts the relevant items of the whole database (`db_labels`), so pass full rankings for
    a curve that reaches recall 1. Queries with no relevant item in the database are left out.

    Returns:
        (precision float64 (C,), recall float64 (C,), cutoffs int64 (C,)); cutoffs default to
        `default_cutoffs(n)`.
    """
    result = evaluate_ranking(
        np.asarray(ranking), query_labels, db_labels, precision_at=(), curve=True, cutoffs=cutoffs
    )["curve"]
    return result["precision"], result["recall"], result["cutoffs"]


def codeword_usage(codes, num_codewords):
    """The fraction of items each codeword codes, per codebook: codes int (N, M) in [0, K) ->
    float64 (M, K), each row summing to 1 (all 0 when N = 0)."""
    codes = np.asarray(codes)
    counts = np.zeros((codes.shape[1], num_codewords), np.int64)
    for m in range(codes.shape[1]):
        counts[m] = np.bincount(codes[:, m], minlength=num_codewords)
    return counts / max(len(codes), 1)


def usage_entropy(usage):
    """Entropy (bits) of each row of a codeword usage (M, K) (`codeword_usage`) -> float64 (M,), 0.0
    (never -0.0) for a row of one codeword."""
    out = np.zeros(len(usage))
    for m, p in enumerate(np.asarray(usage, np.float64)):
        p = p[p > 0]
        out[m] = 0.0 - (p * np.log2(p)).sum()
    return out


def codeword_entropy(codes, num_codewords):
    """Entropy (bits) of how often each codeword is chosen, per codebook: codes uint8 (N, M)
    -> float64 (M,).

    log2(K) when all K codewords are used equally; 0 when a codebook has collapsed to one codeword.
    """
    return usage_entropy(codeword_usage(codes, num_codewords))
