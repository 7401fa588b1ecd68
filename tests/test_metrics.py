"""mAP, precision@k and precision-recall against the original's loop definition, on random data."""

import numpy as np
import original_retrieval as original
import pytest

from gpq_keras import metrics, parallel
from gpq_keras.retrieval import PQIndex


def ref_precision_at_k(sim, ranking, k):
    return np.mean([sum(sim[i, ranking[i, j]] for j in range(k)) / k for i in range(len(ranking))])


def ref_map(sim, ranking, depth):
    """The original's cat_apcal on a (queries, n) ranking."""
    return original.cat_apcal(sim, ranking.T, depth)[0]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def random_problem(rng, q=12, n=90, classes=5, multi=False):
    if multi:
        yq = (rng.random((q, classes)) < 0.3).astype(np.uint8)
        ydb = (rng.random((n, classes)) < 0.3).astype(np.uint8)
        yq[0] = 0  # a query with no label: nothing is relevant
    else:
        yq = rng.integers(0, classes - 1, q)
        ydb = rng.integers(0, classes - 1, n)
        yq[0] = classes - 1  # a class absent from the database: nothing is relevant
    ranking = np.array([rng.permutation(n) for _ in range(q)])
    return yq, ydb, ranking


# --- tests ----------------------------------------------------------------------------------------


def test_average_precision_by_hand():
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], bool)
    np.testing.assert_allclose(
        metrics.average_precision(rel),
        [(1 + 2 / 3) / 2, 0.0, (1 / 2 + 2 / 3 + 3 / 4) / 3],
        rtol=1e-12,
    )


@pytest.mark.parametrize("multi", [False, True])
def test_relevance(rng, multi):
    yq, ydb, _ = random_problem(rng, multi=multi)
    rel = metrics.relevance(yq, ydb)
    assert rel.dtype == bool and rel.shape == (12, 90)
    np.testing.assert_array_equal(rel, original.label_similarity(yq, ydb) == 1)
    assert not rel[0].any()


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("top_k", [None, 1, 7, 45])
def test_mean_average_precision_equals_the_originals_loop(rng, multi, top_k):
    yq, ydb, ranking = random_problem(rng, multi=multi)
    sim = original.label_similarity(yq, ydb)
    want = ref_map(sim, ranking, top_k or ranking.shape[1])
    got = metrics.mean_average_precision(ranking, yq, ydb, top_k=top_k)
    assert abs(got - want) < 1e-12
    assert 0 < got < 1 or (top_k == 1 and got == 0)


def test_mean_average_precision_chunks_give_the_same_answer(rng, monkeypatch):
    yq, ydb, ranking = random_problem(rng, q=40, n=300)
    full = metrics.mean_average_precision(ranking, yq, ydb)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 301)  # one query per chunk
    assert metrics.mean_average_precision(ranking, yq, ydb) == pytest.approx(full, abs=1e-15)


@pytest.mark.parametrize("multi", [False, True])
def test_precision_at_k(rng, multi):
    yq, ydb, ranking = random_problem(rng, multi=multi)
    sim = original.label_similarity(yq, ydb)
    for k in (1, 5, 90):
        want = ref_precision_at_k(sim, ranking, k)
        assert metrics.precision_at_k(ranking, yq, ydb, k) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 90\]"):
        metrics.precision_at_k(ranking, yq, ydb, 91)


def test_precision_recall_curve(rng):
    yq, ydb, ranking = random_problem(rng)
    sim = original.label_similarity(yq, ydb)
    cutoffs = np.array([1, 2, 10, 50, 90])
    precision, recall, c = metrics.precision_recall_curve(ranking, yq, ydb, cutoffs)
    keep = [i for i in range(len(yq)) if sim[i].sum() > 0]  # query 0 has no relevant item: left out
    assert len(keep) == len(yq) - 1
    want_p = [np.mean([sim[i, ranking[i, :c_]].sum() / c_ for i in keep]) for c_ in cutoffs]
    want_r = [
        np.mean([sim[i, ranking[i, :c_]].sum() / sim[i].sum() for i in keep]) for c_ in cutoffs
    ]
    np.testing.assert_allclose(precision, want_p, rtol=1e-12)
    np.testing.assert_allclose(recall, want_r, rtol=1e-12)
    assert recall[-1] == pytest.approx(1.0)
    np.testing.assert_array_equal(c, cutoffs)
    p2, r2, c2 = metrics.precision_recall_curve(ranking, yq, ydb)
    assert c2[0] == 1 and c2[-1] == 90 and np.all(np.diff(c2) > 0) and np.all(np.diff(r2) >= 0)


def test_bad_inputs_are_refused(rng):
    yq, ydb, ranking = random_problem(rng)
    with pytest.raises(ValueError, match="both be int class ids"):
        metrics.relevance(yq, np.eye(90, 5))
    with pytest.raises(ValueError, match=r"database positions in \[0, 90\)"):
        metrics.mean_average_precision(np.where(ranking == 3, -1, ranking), yq, ydb)
    with pytest.raises(ValueError, match="covers 3 of 12 queries"):
        metrics.mean_average_precision(ranking[:3], yq, ydb)
    with pytest.raises(ValueError, match="ranked twice"):
        metrics.evaluate_ranking([(0, ranking), (0, ranking[:1])], yq, ydb)
    with pytest.raises(ValueError, match="int database positions"):
        metrics.mean_average_precision(ranking[0], yq, ydb)


# --- evaluating an index: chunked ranking with ties against the loops -----------------------------


def _tied_index(rng, n=150, labels="int"):
    z = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(4, 3 * 3)).astype(
        np.float32
    )  # exact arithmetic
    codes = rng.integers(0, 4, size=(n, 3)).astype(np.uint8)
    queries = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(11, 9)).astype(np.float32)
    if labels == "int":
        ydb, yq = rng.integers(0, 4, n), rng.integers(0, 5, 11)
        yq[3] = 4  # no relevant item
    else:
        ydb, yq = (rng.random((n, 4)) < 0.4), (rng.random((11, 4)) < 0.4)
        yq[3] = False
    return PQIndex(z, 3).add(codes, labels=ydb), queries, yq, ydb


@pytest.mark.parametrize("labels", ["int", "multi"])
@pytest.mark.parametrize("top_k", [None, 1, 10, 149])
def test_evaluating_index_rankings_equals_the_originals_loop_with_ties(rng, labels, top_k):
    index, queries, yq, ydb = _tied_index(rng, labels=labels)
    distances = original.pq_dist(index.codebook, 3, index.codes, queries)
    _, ranking = original.stable_top_k(distances, index.ntotal)
    assert len(np.unique(distances[0])) < 40  # plenty of ties
    sim = original.label_similarity(yq, ydb)
    want = ref_map(sim, ranking, top_k or index.ntotal)
    result = metrics.evaluate_ranking(
        index.rank(queries, top_k, with_distances=False), yq, ydb, precision_at=(1, 5, 100)
    )
    assert abs(result["mAP"] - want) < 1e-12
    assert result["ap"][3] == 0.0 and result["top_k"] == (top_k or 150)
    for k, value in result["precision"].items():
        assert k <= result["top_k"]
        assert value == pytest.approx(ref_precision_at_k(sim, ranking, k), abs=1e-12)
    # The same through search + mean_average_precision.
    _, ids = index.search(queries, top_k or index.ntotal)
    assert metrics.mean_average_precision(ids, yq, ydb) == pytest.approx(want, abs=1e-12)


def test_evaluation_is_independent_of_chunks_and_threads(rng):
    index, queries, yq, _ = _tied_index(rng, n=400)
    base = metrics.evaluate_ranking(index.rank(queries), yq, index.labels, curve=True)
    try:
        parallel.set_num_threads(1)
        single = metrics.evaluate_ranking(
            index.rank(queries, chunk_size=1), yq, index.labels, curve=True
        )
        parallel.set_num_threads(3)
        many = metrics.evaluate_ranking(
            index.rank(np.concatenate([queries] * 4), chunk_size=40),
            np.concatenate([yq] * 4),
            index.labels,
            curve=True,
        )
    finally:
        parallel.set_num_threads(None)
    np.testing.assert_array_equal(single["ap"], base["ap"])
    np.testing.assert_array_equal(many["ap"], np.concatenate([base["ap"]] * 4))
    for key in ("precision", "recall"):
        np.testing.assert_allclose(single["curve"][key], base["curve"][key], rtol=1e-12)
        np.testing.assert_allclose(many["curve"][key], base["curve"][key], rtol=1e-12)
    # The curve agrees with precision_recall_curve on the full stable ranking.
    ranking = index.search(queries, index.ntotal)[1]
    p, r, _ = metrics.precision_recall_curve(ranking, yq, index.labels, base["curve"]["cutoffs"])
    np.testing.assert_allclose(base["curve"]["precision"], p, rtol=1e-12)
    np.testing.assert_allclose(base["curve"]["recall"], r, rtol=1e-12)


def test_rank_chunks_and_validation(rng):
    index, queries, yq, ydb = _tied_index(rng)
    chunks = [
        (c.start, c.positions.copy(), c.distances.copy())
        for c in index.rank(queries, 7, chunk_size=4)
    ]
    assert [c[0] for c in chunks] == [0, 4, 8] and [len(c[1]) for c in chunks] == [4, 4, 3]
    d, i = index.search(queries, 7)
    np.testing.assert_array_equal(
        np.concatenate([c[1] for c in chunks]), i
    )  # default ids = positions
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), d)
    assert all(c.distances is None for c in index.rank(queries, with_distances=False))
    with pytest.raises(ValueError, match="empty"):
        next(PQIndex(index.codebook, 3).rank(queries))
    with pytest.raises(ValueError, match="exceeds the 150 items"):
        next(index.rank(queries, 151))
    with pytest.raises(ValueError, match="top_k"):
        metrics.evaluate_ranking(index.rank(queries, 10), yq, ydb, top_k=11)
    with pytest.raises(ValueError, match=r"positions in \[0, 3\)"):
        metrics.evaluate_ranking(index.rank(queries), yq, ydb[:3])


@pytest.mark.parametrize("kind", ["float", "str", "wide", 12, 40])
def test_other_label_kinds_equal_the_loop(rng, kind):
    """Float and string class ids are compared exactly; multi-hot labels of 12 and 40 classes (16-
    and 64-bit sets) and of more than 64 classes (rows) work."""
    _, _, ranking = random_problem(rng)
    if kind == "float":
        yq, ydb = (
            np.full(12, 2049.0),
            np.where(np.arange(90) % 2, 2049.0, 2048.0),
        )  # not float16-exact
    elif kind == "str":
        yq, ydb = rng.choice(["cat", "dog", "emu"], 12), rng.choice(["cat", "dog", "emu"], 90)
    else:
        classes = 70 if kind == "wide" else kind
        yq, ydb = (
            (rng.random((12, classes)) < 2 / classes),
            (rng.random((90, classes)) < 2 / classes),
        )
    sim = original.label_similarity(yq, ydb)
    assert metrics.mean_average_precision(ranking, yq, ydb) == pytest.approx(
        ref_map(sim, ranking, 90), abs=1e-12
    )
    np.testing.assert_array_equal(
        metrics.ranked_relevance(ranking, yq, ydb), np.take_along_axis(sim == 1, ranking, axis=1)
    )
