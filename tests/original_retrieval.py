"""The original's retrieval (`utils/RetrievalTest.py`) restated once, loops kept: the reference that
tests compare `gpq_keras.retrieval` / `gpq_keras.metrics` with, and the peer
`benchmarks/bench_retrieval.py` times them against.

`indexing` (database codes), `pq_dist` (asymmetric distances with the raw Z, a table per query and
sub-space), `cat_apcal` (AP over the top N), `original_map` (the three chained), with the original's
argument names. Arithmetic is float64 unless `dtype` says otherwise; only the ranking is made stable
(the original's `np.argsort` is not: its order among equal distances is unspecified). `stable_top_k`
and `label_similarity` are the plain Python definitions of a stable ranking and of relevance.
"""

import numpy as np
from numpy_reference import intra_norm


def indexing(z, descriptor, num_seg):
    """Indexing: per sub-space, argmax over codewords of raw descriptor . intra_norm(Z)
    -> (N, M) ints."""
    zs = np.split(intra_norm(z, num_seg), num_seg, axis=1)
    xs = np.split(np.asarray(descriptor, np.float64), num_seg, axis=1)
    codes = np.zeros((len(descriptor), num_seg), dtype=np.int64)
    for i in range(num_seg):
        for n in range(len(descriptor)):
            codes[n, i] = int(np.argmax([np.dot(xs[i][n], zs[i][k]) for k in range(len(z))]))
    return codes


def indexing_gaps(z, descriptor, num_seg):
    """The gap between the best and second-best dot product of `indexing` (N, M): codes whose gap is
    below float32 resolution may legitimately differ between float32 and float64 arithmetic."""
    zs = np.split(intra_norm(z, num_seg), num_seg, axis=1)
    xs = np.split(np.asarray(descriptor, np.float64), num_seg, axis=1)
    top2 = [np.sort(x @ zm.T, axis=1)[:, -2:] for x, zm in zip(xs, zs)]
    return np.stack([t[:, 1] - t[:, 0] for t in top2], axis=1)


def pq_dist(z, num_seg, gallery_codes, queries, dtype=np.float64):
    """pqDist: (n_query, n_db), per query and sub-space a table 1 - q_m . Z_m[k] over the
    codewords k (raw Z), gathered at the items' codes and summed."""
    zs = np.split(np.asarray(z, dtype), num_seg, axis=1)
    qs = np.split(np.asarray(queries, dtype), num_seg, axis=1)
    codes = np.asarray(gallery_codes).astype(np.int64)
    dist = np.zeros((len(queries), len(codes)), dtype)
    for i in range(len(queries)):
        for j in range(num_seg):
            table = np.array([1.0 - np.dot(qs[j][i], zs[j][k]) for k in range(len(z))], dtype)
            dist[i] += table[codes[:, j]]
    return dist


def cat_apcal(label_similarity, rank, top_n):
    """cat_apcal: `rank` (n_db, n_query) of database indices, one ranked column per query;
    AP = sum over relevant positions p <= top_n of (hits so far / p), divided by the hits
    -> (mAP, AP per query)."""
    num_test = rank.shape[1]
    ap_all = np.zeros(num_test)
    for i in range(num_test):
        hits, precision_sum = 0, 0.0
        for j in range(top_n):
            if label_similarity[i, rank[j, i]] == 1:
                hits += 1
                precision_sum += hits / (j + 1)
        ap_all[i] = precision_sum / hits if hits else 0.0
    return float(np.mean(ap_all)), ap_all


def label_similarity(query_labels, db_labels):
    """0/1 (n_query, n_db): the same class id, or multi-hot labels sharing at least one class."""
    sim = np.zeros((len(query_labels), len(db_labels)), int)
    for i, q in enumerate(query_labels):
        for j, d in enumerate(db_labels):
            sim[i, j] = int(q == d) if np.ndim(q) == 0 else int(any(a and b for a, b in zip(q, d)))
    return sim


def stable_top_k(distances, k):
    """Sort each row by (distance, position) with Python's sorted; pad with inf / -1 like faiss."""
    ids = np.full((len(distances), k), -1, np.int64)
    dist = np.full((len(distances), k), np.inf)
    for q, row in enumerate(distances):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))[:k]
        ids[q, : len(order)] = order
        dist[q, : len(order)] = row[order]
    return dist, ids


def original_map(z, num_seg, db_features, query_features, similarity, top_n=None):
    """PQ_retrieval's mAP: codes of the database, raw query features, asymmetric distances, stable
    rank.

    Returns (mAP, database codes, distances (n_query, n_db)).
    """
    codes = indexing(z, db_features, num_seg)
    dist = pq_dist(z, num_seg, codes, query_features)
    rank = np.argsort(dist.T, axis=0, kind="stable")
    return cat_apcal(similarity, rank, top_n or len(db_features))[0], codes, dist
