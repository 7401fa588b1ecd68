"""Search at scale: the block-by-block NumPy top-k, faiss fast-scan with exact re-ranking and its
error bound, the choice between them, fast-scan and inverted-file faiss exports, against brute force
(the original's loops, NumPy float64)."""

import warnings

import keras
import numpy as np
import original_retrieval as original
import pytest

from gpq_keras import GPQ, cli
from gpq_keras.config import GPQConfig
from gpq_keras.retrieval import PQIndex, faiss_bridge, fast_scan, fast_scan_error_bound, kernels

faiss = pytest.importorskip("faiss")  # requirements.txt installs it; the [faiss] extra elsewhere

DYADIC = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


def tie_heavy(rng, n, q=12, m=4, d=3, mode="original"):
    """K=16, values in multiples of 1/2: every distance is exact in float32 whatever the summation
    order, and distances tie by the hundred (few distinct sums, repeated codewords and codes)."""
    if mode == "original":
        z = rng.choice(DYADIC, size=(16, m * d)).astype(np.float32)
        queries = rng.choice(DYADIC, size=(q, m * d)).astype(np.float32)
    else:  # one non-zero entry per sub-vector keeps intra-normalisation exact

        def axis_vectors(count):
            out = np.zeros((count, m * d), np.float32)
            out[np.arange(count)[:, None], np.arange(m) * d + rng.integers(0, d, (count, m))] = (
                rng.choice([-2.0, -1.0, 0.5, 4.0], size=(count, m))
            )
            return out

        z, queries = axis_vectors(16), axis_vectors(q)
    z[5] = z[3]  # a repeated codeword
    codes = rng.integers(0, 16, size=(n, m)).astype(np.uint8)
    codes[n // 2 : n // 2 + n // 10] = codes[: n // 10]  # repeated codes
    return PQIndex(z, m, mode).add(codes), queries


def brute_force(index, queries, k):
    """The original's pqDist (float64 loops) and a stable sort: ties by position -> (distances,
    positions)."""
    dist = original.pq_dist(
        index.pq.words, index.num_subspaces, index.codes, index.pq.prepare_queries(queries)
    )
    return original.stable_top_k(dist, k)


def count_fallbacks(monkeypatch):
    """Count the queries that fast-scan re-ranking (`fast_scan.rerank`) hands to brute force
    (`kernels.blockwise_top_k`, which the NumPy path also calls, for a top-k of more than 65,536
    items: none here)."""
    calls = []
    real = kernels.blockwise_top_k

    def spy(tables, codes, k, **kwargs):
        calls.append(len(tables))
        return real(tables, codes, k, **kwargs)

    monkeypatch.setattr(kernels, "blockwise_top_k", spy)
    return calls


def fast_scan_top_k(index, queries, k):
    """The exact fast-scan top-k (`fast_scan.rerank` of faiss' candidates), whatever k."""
    searcher = faiss_bridge.fast_scan_index(index.pq, index.codes)
    search = faiss_bridge.fast_scan_search(searcher, index.num_subspaces)
    prepared, tables = index.pq.prepare_queries(queries), index.pq.lookup_tables(queries)
    return fast_scan.rerank(search, prepared, tables, index.codes, k)


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_fast_scan_exact_equals_brute_force_on_ties(rng, monkeypatch, mode):
    index, queries = tie_heavy(rng, 3000, mode=mode)
    fallbacks = count_fallbacks(monkeypatch)
    for k in (1, 10, 100, 700):
        want_d, want_i = brute_force(index, queries, k)
        d, i = index.search(queries, k)  # auto: faiss fast-scan, re-ranked (NumPy for k = 700)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))
        d, positions = fast_scan_top_k(index, queries, k)  # fast-scan for every k
        np.testing.assert_array_equal(positions, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))
    row = original.pq_dist(index.pq.words, 4, index.codes, index.pq.prepare_queries(queries[:1]))[0]
    assert len(np.unique(row)) < 100  # 3,000 items at fewer than 100 distinct distances
    # 2,900 items with one code tie at one distance: the candidates can never hold the whole tie, so
    # fetching more fails until brute force takes over, which must agree too.
    codes = index.codes.copy()
    codes[100:] = codes[0]
    same = PQIndex(index.codebook, 4, mode).add(codes)
    for k in (5, 100):
        want_d, want_i = brute_force(same, queries, k)
        d, i = same.search(queries, k)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))
        d, positions = fast_scan_top_k(same, queries, k)  # fast-scan also where NumPy ranks
        np.testing.assert_array_equal(positions, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))
    assert sum(fallbacks) > 0


def test_fast_scan_exact_needs_no_fallback_on_spread_data(rng, monkeypatch):
    z = rng.standard_normal((16, 8 * 4)).astype(np.float32)
    index = PQIndex(z, 8, "consistent").add(rng.standard_normal((20000, 32)).astype(np.float32))
    queries = rng.standard_normal((30, 32)).astype(np.float32)
    fallbacks = count_fallbacks(monkeypatch)
    d, i = index.search(queries, 50, backend="faiss")
    assert fallbacks == []
    want = original.pq_dist(index.pq.words, 8, index.codes, index.pq.prepare_queries(queries))
    np.testing.assert_allclose(d, np.sort(want, axis=1)[:, :50], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(want, i, axis=1), d, atol=1e-5)
    gaps = np.diff(np.sort(want, axis=1)[:, :51], axis=1)  # (30, 50): gaps[:, j] follows result j
    clear = (gaps > 1e-4) & np.concatenate([np.full((30, 1), True), gaps[:, :-1] > 1e-4], axis=1)
    np.testing.assert_array_equal(i[clear], np.argsort(want, axis=1, kind="stable")[:, :50][clear])
    assert clear.mean() > 0.9  # no near-tie on either side: the order is not a matter of rounding


@pytest.mark.parametrize("case", ["random", "one wide sub-space", "negative", "constant sub-space"])
def test_fast_scan_error_bound_holds(rng, case):
    """Every approximate distance faiss' fast-scan gives is within `fast_scan_error_bound` of the
    exact one, and the bound is not loose by orders of magnitude."""
    m, d = 6, 4
    z = rng.standard_normal((16, m * d)).astype(np.float32)
    queries = rng.standard_normal((20, m * d)).astype(np.float32)
    if case == "one wide sub-space":
        queries[:, :d] *= 100.0
    elif case == "negative":
        z = -np.abs(z) * 3
        queries = np.abs(queries)
    elif case == "constant sub-space":
        z[:, d : 2 * d] = z[0, d : 2 * d]
    index = PQIndex(z, m).add(rng.integers(0, 16, (5000, m)).astype(np.uint8))
    sims, pos = index.to_faiss(fast_scan=True).search(queries, index.ntotal)
    found = pos >= 0  # asked for every item, faiss leaves out a few with the lowest score (id -1)
    assert found.mean() > 0.99
    exact = np.take_along_axis(
        original.pq_dist(z, m, index.codes, queries), np.maximum(pos, 0), axis=1
    )
    error = np.where(found, np.abs((m - sims.astype(np.float64)) - exact), 0).max(axis=1)
    bound = fast_scan_error_bound(index.pq.lookup_tables(queries))
    assert np.all(error <= bound)
    assert np.all(error >= 0.2 * bound)


def test_exact_false_says_so_and_stays_within_the_bound(rng):
    z = rng.standard_normal((16, 24)).astype(np.float32)
    index = PQIndex(z, 6).add(rng.integers(0, 16, (4000, 6)).astype(np.uint8))
    queries = rng.standard_normal((10, 24)).astype(np.float32)
    with pytest.warns(UserWarning, match="not re-ranked"):
        d, i = index.search(queries, 20, exact=False)
    exact = original.pq_dist(z, 6, index.codes, queries)
    bound = fast_scan_error_bound(index.pq.lookup_tables(queries))
    assert np.all(np.abs(np.take_along_axis(exact, i, axis=1) - d) <= bound[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.search(queries, 20)  # exact: no warning
        index.search(queries, 20, exact=False, backend="numpy")  # NumPy is exact anyway


def test_numpy_top_k_builds_each_block_once_and_merges_exactly(rng, monkeypatch):
    """Blocks of the database outside, queries inside: the one-hot codes of each block are made
    once however many queries there are (the super-linear cost was a rebuild per query chunk), and
    merging the blocks' top-k gives brute force, ties included."""
    made = []
    real = kernels.onehot_codes
    monkeypatch.setattr(
        kernels, "onehot_codes", lambda codes, k: made.append(len(codes)) or real(codes, k)
    )
    index, queries = tie_heavy(rng, 1000, q=23)
    tables = index.pq.lookup_tables(queries)
    for k in (1, 7, 60):
        made.clear()
        want_d, want_i = brute_force(index, queries, k)
        # Blocks of 128 items, chunks of 128 * 5 distances: 5 queries per chunk.
        keys = kernels.blockwise_top_k(tables, index.codes, k, block_size=128, chunk_elements=640)
        d, i = kernels.decode_distances(keys), index.ids[kernels.key_positions(keys)]
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))
        assert made == [128] * 7 + [1000 - 7 * 128]  # one per block, for all 23 queries
        d, i = index.search(queries, k, backend="numpy")  # 1,000 items: the full ranking
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, want_d.astype(np.float32))


def test_backend_is_checked(rng):
    index = PQIndex(rng.standard_normal((8, 6)).astype(np.float32), 2).add(
        rng.integers(0, 8, (10, 2)).astype(np.uint8)
    )
    with pytest.raises(ValueError, match="needs K=16"):
        index.search(np.zeros((1, 6), np.float32), 3, backend="faiss")
    with pytest.raises(ValueError, match="needs K=16"):
        index.to_faiss(nlist=2)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        index.search(np.zeros((1, 6), np.float32), 3, backend="gpu")
    assert index.search(np.zeros((1, 6), np.float32), 3)[1].shape == (1, 3)  # auto: NumPy for K=8


def test_k_close_to_ntotal_takes_the_full_ranking(rng, monkeypatch):
    """Fast-scan candidates pay for a small k only: above ntotal / 32 an exact search ranks with
    NumPy on the faiss backend too (at 54,000 items a fast-scan top-13,500 took ten times the full
    ranking: `benchmarks/bench_search.py --dispatch`), with the same results."""
    index, queries = tie_heavy(rng, 3200, q=9)
    reranked = []
    real = fast_scan.rerank
    monkeypatch.setattr(fast_scan, "rerank", lambda *args: reranked.append(args[-1]) or real(*args))
    for k in (1, 50, 100, 101, 1000, 3199, 3200, 3300):
        reranked.clear()
        kk = min(k, index.ntotal)
        assert index.fast_scan_pays(kk) == (kk <= 100)
        want_d, want_i = brute_force(index, queries, kk)
        for backend in ("auto", "faiss"):
            d, i = index.search(queries, k, backend=backend)
            np.testing.assert_array_equal(i[:, :kk], want_i)
            np.testing.assert_array_equal(d[:, :kk], want_d.astype(np.float32))
            assert np.all(i[:, kk:] == -1) and np.all(np.isinf(d[:, kk:]))
        assert reranked == ([kk, kk] if kk <= 100 else [])
        d, i = index.search(queries, k, backend="numpy")
        np.testing.assert_array_equal(i[:, :kk], want_i)
    with pytest.warns(UserWarning, match="not re-ranked"):  # asked for: fast-scan, whatever k
        _, i = index.search(queries, 3000, exact=False)
    assert reranked == [] and np.all(np.sort(i, axis=1)[:, -1] < index.ntotal)


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_to_faiss_fast_scan_and_inverted_file_keep_the_codes(rng, mode):
    m, d = 4, 6
    z = rng.standard_normal((16, m * d)).astype(np.float32)
    centres = rng.standard_normal((8, m * d)).astype(np.float32) * 3
    features = (centres[rng.integers(0, 8, 3000)] + rng.standard_normal((3000, m * d))).astype(
        np.float32
    )
    ids = np.arange(3000, dtype=np.int64) * 7 + 1
    index = PQIndex(z, m, mode).add(features, ids=ids)
    queries = (centres[rng.integers(0, 8, 15)] + rng.standard_normal((15, m * d))).astype(
        np.float32
    )
    prepared = index.pq.prepare_queries(queries)
    want_d, want_ids = index.search(queries, 10)
    exact = original.pq_dist(index.pq.words, m, index.codes, prepared)
    bound = fast_scan_error_bound(index.pq.lookup_tables(queries))[:, None]
    fast = index.to_faiss(fast_scan=True)  # custom ids: wrapped in an IndexIDMap
    ivf = index.to_faiss(nlist=8, nprobe=8, train=features[:1000])
    assert isinstance(faiss.downcast_index(fast.index), faiss.IndexPQFastScan)
    assert isinstance(ivf, faiss.IndexIVFPQFastScan) and not ivf.by_residual and ivf.nprobe == 8
    for built in (fast, ivf):
        sims, found = built.search(prepared, 10)
        positions = (found - 1) // 7
        assert np.all(found >= 0) and np.all((found - 1) % 7 == 0)
        # Each found item's approximate distance is within the bound of its exact one: our codes.
        assert np.all(np.abs(m - sims - np.take_along_axis(exact, positions, axis=1)) <= bound)
        assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, want_ids)]) >= 9
    ivf.nprobe = 1  # fewer lists: fewer items scanned, results still items of the index
    sims, found = ivf.search(prepared, 10)
    assert set(found[found >= 0].tolist()) <= set(ids.tolist())
    assert np.all(
        np.abs(m - sims - np.take_along_axis(exact, (np.maximum(found, 1) - 1) // 7, axis=1))[
            found >= 0
        ]
        <= np.broadcast_to(bound, found.shape)[found >= 0]
    )


@pytest.mark.large
def test_cli_builds_and_searches_fast_scan_and_inverted_files(tmp_path, capsys):
    config = GPQConfig(
        num_subspaces=2,
        num_codewords=16,
        subspace_dim=4,
        num_classes=3,
        image_shape=(16, 16, 3),
        filters=(4, 8, 8, 8),
    )
    keras.utils.set_random_seed(0)
    model = GPQ(config)
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(
        data, x_query=images[:8], y_query=np.zeros(8, int), x_db=images[8:], y_db=np.zeros(292, int)
    )
    common = ["--model", str(tmp_path / "m.keras"), "--data", f"npz:{data}"]
    npz, ivf = str(tmp_path / "i.npz"), str(tmp_path / "i.faiss")
    assert cli.main(["index", "build", *common, "--output", npz]) == 0
    assert (
        cli.main(
            ["index", "build", *common, "--output", ivf, "--faiss", "--nlist", "4", "--nprobe", "2"]
        )
        == 0
    )
    assert faiss.read_index(ivf).nprobe == 2 and faiss.read_index(ivf).ntotal == 292
    hits = {}
    for name, path, extra in (
        ("exact", npz, []),
        ("approximate", npz, ["--approximate"]),
        ("ivf", ivf, ["--nprobe", "4"]),
    ):
        out = tmp_path / f"{name}.npz"
        assert (
            cli.main(
                [
                    "index",
                    "search",
                    *common,
                    "--index",
                    path,
                    "-k",
                    "5",
                    "--output",
                    str(out),
                    *extra,
                ]
            )
            == 0
        )
        hits[name] = np.load(out)
    assert "approximate: fast-scan results" in capsys.readouterr().out
    index = PQIndex.load(npz)
    queries = model.encode(images[:8])
    want_d, want_i = index.search(queries, 5, backend="numpy")
    np.testing.assert_array_equal(hits["exact"]["ids"], want_i)
    bound = fast_scan_error_bound(index.pq.lookup_tables(queries))[:, None]
    for name in ("approximate", "ivf"):  # every list probed: the approximate top 5 within the bound
        assert np.all(np.abs(hits[name]["distances"] - want_d) <= 2 * bound), name
    for argv, needle in (
        (["index", "search", *common, "--index", npz, "--nprobe", "2"], "not an inverted-file"),
        (
            ["index", "build", *common, "--output", str(tmp_path / "x.npz"), "--nlist", "4"],
            "add --faiss",
        ),
    ):
        assert cli.main(argv) == 2
        assert needle in capsys.readouterr().err
