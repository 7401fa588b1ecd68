"""`retrieval.lookups`: search hits as the records of `gpq search --json` and `gpq serve`."""

import os

import numpy as np

from gpq_keras.retrieval import PQIndex, lookups

M, K, DIM = 2, 4, 3


def _index(**store):
    codebook = np.random.default_rng(0).normal(size=(K, M * DIM)).astype(np.float32)
    index = PQIndex(codebook, M, class_names=store.pop("class_names", None))
    codes = np.array([[0, 1], [2, 3], [1, 1], [3, 0]], np.uint8)
    index.add(codes, ids=np.array([10, 11, 12, 13]), **store)
    return index


def _search(index, k):
    queries = np.random.default_rng(1).normal(size=(2, M * DIM)).astype(np.float32)
    return index.search(queries, k)


def test_records_hold_rank_id_distance_class_and_absolute_source(tmp_path):
    sources = [str(tmp_path / f"{name}.png") for name in "abcd"]
    index = _index(labels=np.array([0, 1, -1, 1]), sources=sources, class_names=["cat", "dog"])
    distances, ids = _search(index, 3)
    records = lookups(index, ["q0.jpg", "q1.jpg"], distances, ids)
    by_id = dict(zip([10, 11, 12, 13], zip(["cat", "dog", None, "dog"], sources)))
    assert [r["query"] for r in records] == ["q0.jpg", "q1.jpg"]
    for q, record in enumerate(records):
        assert [hit["rank"] for hit in record["results"]] == [1, 2, 3]
        for hit, i, d in zip(record["results"], ids[q], distances[q]):
            assert hit["id"] == int(i) and type(hit["id"]) is int
            assert hit["distance"] == float(d) and type(hit["distance"]) is float
            cls, source = by_id[hit["id"]]
            assert hit.get("class") == cls  # an item without a label has no "class" key
            assert hit["source"] == source and os.path.isabs(hit["source"])


def test_an_index_of_codes_only_gives_rank_id_and_distance():
    index = _index()
    distances, ids = _search(index, 4)
    records = lookups(index, ["a", "b"], distances, ids)
    for q, record in enumerate(records):
        assert record["results"] == [
            {"rank": r + 1, "id": int(i), "distance": float(d)}
            for r, (i, d) in enumerate(zip(ids[q], distances[q]))
        ]
    # the ranking itself: ascending distance
    assert all(np.all(np.diff(distances[q]) >= 0) for q in range(2))


def test_labels_without_class_names_give_no_class():
    index = _index(labels=np.array([0, 1, 0, 1]))
    distances, ids = _search(index, 2)
    (record, _) = lookups(index, ["a", "b"], distances, ids)
    assert all(set(hit) == {"rank", "id", "distance"} for hit in record["results"])
