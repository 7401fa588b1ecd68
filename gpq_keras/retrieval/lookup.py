"""Search results as records (TensorFlow Similarity's lookups): each hit's rank, id, ADC distance,
and the item store's source and class, the JSON of `gpq search --json` and of `gpq serve`."""


def lookups(index, query_names, distances, ids):
    """The hits of Q queries -> [{"query": name, "results": [{"rank", "id", "distance", "source"?,
    "class"?}, ...]}, ...], one record per query.

    `distances`, `ids`: (Q, k) from `index.search` with k <= `index.ntotal` (no padding).
    "source" is the item's absolute file path (an index of files), "class" its class name (an
    index with class names; an unlabeled file has none).
    """
    sources = index.source_paths(ids) if index.sources is not None else None
    int_labels = index.labels is not None and index.labels.ndim == 1
    classes = index.class_names_for(ids) if index.class_names and int_labels else None
    records = []
    for q, name in enumerate(query_names):
        hits = []
        for rank, (i, d) in enumerate(zip(ids[q], distances[q]), start=1):
            hit = {"rank": rank, "id": int(i), "distance": float(d)}
            if classes is not None and classes[q, rank - 1]:  # "": no class (an unlabeled file)
                hit["class"] = str(classes[q, rank - 1])
            if sources is not None:
                hit["source"] = str(sources[q, rank - 1])
            hits.append(hit)
        records.append({"query": name, "results": hits})
    return records
