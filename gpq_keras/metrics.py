"""Retrieval metrics: mAP as the original computes it, precision@k, precision-recall; vectorised, chunked.

Labels are int class ids (N,) (relevant = same class) or multi-hot (N, classes) (relevant = at least one
shared class). A *ranking* is an int array (Q, n) of database positions (rows of `db_labels`), best first,
e.g. the ids `PQIndex.search` returns for an index with default ids.

Average precision is the original's `cat_apcal`: walk the top N of a ranked list; at each relevant rank j
(1-based) add (relevant items so far) / j; AP is that sum over the relevant items found in the top N
(not over all relevant items in the database), and 0 for a query with none. mAP is the mean over all
queries, those with no relevant item included.
"""

import numpy as np

_CHUNK_ELEMENTS = 1 << 21  # queries x database elements handled at once (a few tens of MB of temporaries)


def _check_labels(query_labels, db_labels):
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if query_labels.ndim not in (1, 2) or query_labels.ndim != db_labels.ndim:
        raise ValueError("labels must both be int class ids (N,) or both multi-hot (N, classes). "
                         f"Received shapes: query {query_labels.shape}, database {db_labels.shape}")
    if query_labels.ndim == 2 and query_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"multi-hot labels must have the same number of classes. Received shapes: "
                         f"query {query_labels.shape}, database {db_labels.shape}")
    if query_labels.ndim == 2:
        query_labels, db_labels = (query_labels != 0).astype(np.float32), (db_labels != 0).astype(np.float32)
    return query_labels, db_labels


def relevance(query_labels, db_labels):
    """Relevance of every database item to every query -> bool (Q, N): equal class ids, or multi-hot
    labels sharing at least one class."""
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    return _relevance(query_labels, db_labels)


def _relevance(query_labels, db_labels):
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels @ db_labels.T) > 0


def _check_ranking(ranking, num_queries, num_db):
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != num_queries or not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError(f"`ranking` must be int database positions of shape ({num_queries}, n). "
                         f"Received: {ranking.dtype} {ranking.shape}")
    if ranking.size and (ranking.min() < 0 or ranking.max() >= num_db):
        raise ValueError(f"`ranking` must hold database positions in [0, {num_db}); it holds "
                         f"{ranking.min()}..{ranking.max()} (-1 is search's padding for k > ntotal)")
    return ranking


def ranked_relevance(ranking, query_labels, db_labels):
    """Relevance of the items of each ranked list -> bool (Q, n)."""
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    ranking = _check_ranking(ranking, len(query_labels), len(db_labels))
    return _ranked_relevance(ranking, query_labels, db_labels)


def _ranked_relevance(ranking, query_labels, db_labels):
    if query_labels.ndim == 1:
        return db_labels[ranking] == query_labels[:, None]
    out = np.empty(ranking.shape, bool)
    step = max(1, _CHUNK_ELEMENTS // max(1, ranking.shape[1] * db_labels.shape[1]))
    for s in range(0, len(ranking), step):
        shared = np.einsum("qnc,qc->qn", db_labels[ranking[s:s + step]], query_labels[s:s + step])
        out[s:s + step] = shared > 0
    return out


def _chunks(num_queries, width):
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    return [slice(s, s + step) for s in range(0, num_queries, step)]


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


def mean_average_precision(ranking, query_labels, db_labels, top_k=None):
    """mAP over the top_k of each ranked list (default: the whole list, e.g. the whole database).

    Args:
        ranking: int (Q, n), database positions best first.
        query_labels: (Q,) int or (Q, classes) multi-hot.
        db_labels: (N,) int or (N, classes) multi-hot.
        top_k: int <= n, or None for n.
    """
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    ranking = _check_ranking(ranking, len(query_labels), len(db_labels))
    top_k = _check_top_k(top_k, ranking.shape[1])
    ap = np.zeros(len(query_labels))
    for rows in _chunks(len(ranking), top_k):
        ap[rows] = average_precision(_ranked_relevance(ranking[rows, :top_k], query_labels[rows], db_labels))
    return float(ap.mean()) if len(ap) else 0.0


def _check_top_k(top_k, width, name="top_k"):
    if top_k is None:
        return width
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= width:
        raise ValueError(f"`{name}` must be an int in [1, {width}] (the ranked list's length). "
                         f"Received: {name}={top_k!r}")
    return int(top_k)


def precision_at_k(ranking, query_labels, db_labels, k):
    """Mean over queries of (relevant items among the first k) / k."""
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    ranking = _check_ranking(ranking, len(query_labels), len(db_labels))
    k = _check_top_k(k, ranking.shape[1], "k")
    hits = 0
    for rows in _chunks(len(ranking), k):
        hits += np.count_nonzero(_ranked_relevance(ranking[rows, :k], query_labels[rows], db_labels))
    return hits / (k * len(ranking)) if len(ranking) else 0.0


def default_cutoffs(n, num=100):
    """List lengths for a precision-recall curve: ~`num` linear and ~`num`/2 geometric points in [1, n]."""
    points = np.concatenate([np.linspace(1, n, num), np.geomspace(1, n, num // 2)])
    return np.unique(np.clip(np.round(points), 1, n).astype(np.int64))


def _curve_sums(rel_ranked, num_relevant, cutoffs):
    """(sum of precision, sum of recall, number of queries counted) at cutoffs over queries with
    at least one relevant item in the database."""
    keep = num_relevant > 0
    found = np.cumsum(rel_ranked[keep], axis=1, dtype=np.int64)[:, cutoffs - 1]
    precision = (found / cutoffs).sum(0)
    recall = (found / num_relevant[keep, None]).sum(0)
    return precision, recall, int(keep.sum())


def precision_recall_curve(ranking, query_labels, db_labels, cutoffs=None):
    """Mean precision and recall of the first c items of each ranked list, for each cutoff c.

    Recall counts the relevant items of the whole database (`db_labels`), so pass full rankings for a
    curve that reaches recall 1. Queries with no relevant item in the database are left out (their
    recall is undefined).

    Returns:
        (precision float64 (C,), recall float64 (C,), cutoffs int64 (C,)); cutoffs default to
        `default_cutoffs(n)`.
    """
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    ranking = _check_ranking(ranking, len(query_labels), len(db_labels))
    cutoffs = _check_cutoffs(cutoffs, ranking.shape[1])
    precision, recall, count = np.zeros(len(cutoffs)), np.zeros(len(cutoffs)), 0
    for rows in _chunks(len(ranking), max(ranking.shape[1], len(db_labels))):
        num_relevant = _relevance(query_labels[rows], db_labels).sum(1)
        rel = _ranked_relevance(ranking[rows], query_labels[rows], db_labels)
        p, r, c = _curve_sums(rel, num_relevant, cutoffs)
        precision, recall, count = precision + p, recall + r, count + c
    return precision / max(count, 1), recall / max(count, 1), cutoffs


def _check_cutoffs(cutoffs, width):
    if cutoffs is None:
        return default_cutoffs(width)
    cutoffs = np.asarray(cutoffs)
    if (cutoffs.ndim != 1 or not np.issubdtype(cutoffs.dtype, np.integer) or not len(cutoffs)
            or cutoffs.min() < 1 or cutoffs.max() > width):
        raise ValueError(f"`cutoffs` must be ints in [1, {width}]. Received: {cutoffs!r}")
    return cutoffs.astype(np.int64)


def evaluate_index(index, queries, query_labels, db_labels=None, top_k=None, precision_at=(10, 100, 1000),
                   curve=False, chunk_size=None):
    """Search an index and score it, chunk by chunk over queries, never holding the whole ranking.

    Per chunk the distances (chunk, N) are ranked with the relevance flag carried in the sort key, so
    the ranked relevance comes out of the sort without a gather; ties rank by database position, as
    `PQIndex.search` does.

    Args:
        index: a `PQIndex` (or anything with `ntotal`, `labels` and `iter_distances`).
        queries: float (Q, M*d) query features.
        query_labels: (Q,) int or (Q, classes) multi-hot.
        db_labels: labels in insertion order; default the index's own `labels`.
        top_k: mAP over the top_k (default: the whole database, as the paper).
        precision_at: list lengths for precision@k (those > top_k are skipped).
        curve: also return the precision-recall curve over the top_k.
        chunk_size: queries per chunk (default: about 8M distances per chunk).

    Returns:
        dict with "mAP" (float), "ap" (float64 (Q,)), "top_k", "precision" ({k: float}), and with
        `curve` a "curve" dict of "precision", "recall", "cutoffs" arrays.
    """
    from gpq_keras.retrieval import _distance_keys_with_flags, map_rows, smallest_k

    if db_labels is None:
        db_labels = index.labels
        if db_labels is None:
            raise ValueError("the index holds no labels; pass db_labels")
    query_labels, db_labels = _check_labels(query_labels, db_labels)
    if len(db_labels) != index.ntotal:
        raise ValueError(f"db_labels has {len(db_labels)} rows for an index of {index.ntotal} items")
    if len(query_labels) != len(queries):
        raise ValueError(f"query_labels has {len(query_labels)} rows for {len(queries)} queries")
    if not index.ntotal:
        raise ValueError("the index is empty")
    top_k = _check_top_k(top_k, index.ntotal)
    ks = sorted({int(k) for k in precision_at if 1 <= int(k) <= top_k})
    cutoffs = default_cutoffs(top_k) if curve else None
    ap = np.zeros(len(query_labels))
    hits = {k: 0 for k in ks}
    curve_sums = [np.zeros(len(cutoffs)), np.zeros(len(cutoffs)), 0] if curve else None
    keys = None
    for start, dist in index.iter_distances(queries, chunk_size):
        if keys is None:
            keys = np.empty(dist.shape, np.int64)

        def score(rows, start=start, dist=dist):
            rel = _relevance(query_labels[start + rows.start:start + rows.stop], db_labels)
            ranked = smallest_k(_distance_keys_with_flags(dist[rows], rel, out=keys[rows]), top_k)
            ranked = (ranked.view(np.uint8)[:, 0::8] & 1).view(bool)  # bit 0 of each (little-endian) key
            counts = [np.count_nonzero(ranked[:, :k]) for k in ks]
            sums = _curve_sums(ranked, rel.sum(1), cutoffs) if curve else None
            return average_precision(ranked), counts, sums

        parts = map_rows(score, len(dist))
        ap[start:start + len(dist)] = np.concatenate([part[0] for part in parts])
        for part in parts:
            for k, count in zip(ks, part[1]):
                hits[k] += count
            if curve:
                curve_sums = [total + new for total, new in zip(curve_sums, part[2])]
    num = max(len(query_labels), 1)
    result = {"mAP": float(ap.mean()) if len(ap) else 0.0, "ap": ap, "top_k": top_k,
              "precision": {k: hits[k] / (k * num) for k in ks}}
    if curve:
        count = max(curve_sums[2], 1)
        result["curve"] = {"precision": curve_sums[0] / count, "recall": curve_sums[1] / count,
                           "cutoffs": cutoffs}
    return result
