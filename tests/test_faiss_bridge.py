"""faiss interoperability: faiss indexes of the codes rank as PQIndex does, faiss files are written,
read and checked, and faiss stays optional."""

import os

import numpy as np
import pytest
from retrieval_fakes import dyadic_problem

from gpq_keras.files import FileFormatError
from gpq_keras.retrieval import (
    FaissFileIndex,
    PQIndex,
    ProductQuantizer,
    is_pqindex_file,
    open_index,
    read_faiss_index,
    write_faiss_index,
)
from gpq_keras.retrieval.faiss_bridge import faiss_centroids, to_distances


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _assert_same_ranking_up_to_ties(ours_d, ours_i, faiss_d, faiss_i, m):
    """Equal distances; within each run of equal distances the same ids (faiss orders ties its own
    way)."""
    np.testing.assert_array_equal(ours_d, np.float32(m) - faiss_d)
    for row_d, row_i, frow_i in zip(ours_d, ours_i, faiss_i):
        for value in np.unique(row_d[:-1]):  # the last run may be cut at k differently
            if value == row_d[-1]:
                continue
            run = row_d == value
            assert set(row_i[run]) == set(frow_i[run])


def test_faiss_index_ranks_identically_exact_data(rng):
    z, codes, queries = dyadic_problem(rng, m=4, k=16, d=3, n=300, q=12)
    index = PQIndex(z, 4).add(codes)
    fx = index.to_faiss()
    assert fx.ntotal == 300 and fx.metric_type == 0  # METRIC_INNER_PRODUCT
    for k in (10, 300):
        d, i = index.search(queries, k)
        fd, fi = fx.search(index.pq.prepare_queries(queries), k)
        _assert_same_ranking_up_to_ties(d, i, fd, fi, 4)


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_faiss_index_ranks_identically_random_data(rng, mode):
    z = rng.standard_normal((16, 6 * 4)).astype(np.float32)
    features = rng.standard_normal((500, 24)).astype(np.float32)
    index = PQIndex(z, 6, mode=mode).add(features, ids=np.arange(500) * 3)
    assert len(np.unique(index.codes, axis=0)) == 500  # no tie-producing duplicates
    queries = rng.standard_normal((15, 24)).astype(np.float32)
    d, i = index.search(queries, 500)
    fd, fi = index.to_faiss().search(index.pq.prepare_queries(queries), 500)
    np.testing.assert_allclose(d, 6 - fd, atol=2e-5)
    separated = np.diff(d, axis=1, prepend=-np.inf, append=np.inf)
    clear = (separated[:, :-1] > 1e-4) & (separated[:, 1:] > 1e-4)  # no near-tie on either side
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(i[clear], fi[clear])  # custom ids through faiss.IndexIDMap


def test_to_faiss_round_trips_through_faiss_files(rng, tmp_path):
    import faiss

    z, codes, queries = dyadic_problem(rng, m=4, k=16, d=3, n=50, q=3)
    index = PQIndex(z, 4).add(codes)
    faiss.write_index(index.to_faiss(), str(tmp_path / "x.faiss"))
    back = faiss.read_index(str(tmp_path / "x.faiss"))
    np.testing.assert_array_equal(
        back.search(queries, 5)[0], index.to_faiss().search(queries, 5)[0]
    )


def test_faiss_is_optional_with_an_install_hint(rng, monkeypatch):
    import sys

    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4).add(
        np.zeros((3, 4), np.uint8)
    )
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ImportError, match=r"pip install 'gpq-keras\[faiss\]'"):
        index.to_faiss()
    assert index.search(np.zeros((1, 12), np.float32), 2)[1].tolist() == [
        [0, 1]
    ]  # the rest needs no faiss


def test_the_centroid_layout_and_distances_are_faiss(rng):
    import faiss

    z, codes, queries = dyadic_problem(rng, m=4, k=16, d=3, n=40, q=3)
    pq = PQIndex(z, 4, mode="consistent").add(codes).pq
    fx = PQIndex(z, 4, mode="consistent").add(codes).to_faiss()
    np.testing.assert_array_equal(faiss.vector_to_array(fx.pq.centroids), faiss_centroids(pq))
    np.testing.assert_array_equal(faiss_centroids(pq), pq.centroids.ravel())
    sims = np.array([[3.5, -1.0]], np.float32)
    np.testing.assert_array_equal(to_distances(sims, 4), [[0.5, 5.0]])
    assert to_distances(sims, 4).dtype == np.float32
    assert to_distances(sims, 4, np.float64).dtype == np.float64


def test_faiss_files_are_written_read_and_searched_like_the_index(rng, tmp_path):
    z, codes, queries = dyadic_problem(rng, m=4, k=16, d=3, n=300, q=6)
    index = PQIndex(z, 4).add(codes, ids=np.arange(300) * 2 + 5)
    prepared = index.pq.prepare_queries(queries)
    builds = {
        "pq": (index.to_faiss(), False),
        "fast": (index.to_faiss(fast_scan=True), False),
        "ivf": (index.to_faiss(nlist=4, nprobe=4), True),
    }
    for name, (built, inverted) in builds.items():
        path = tmp_path / f"{name}.faiss"
        write_faiss_index(built, path)
        assert not is_pqindex_file(path)
        opened = read_faiss_index(path, index.pq)
        assert isinstance(opened, FaissFileIndex) and opened.pq is index.pq
        assert opened.ntotal == 300 and opened.inverted == inverted
        assert opened.sources is None and opened.labels is None and opened.class_names is None
        d, i = opened.search(queries, 10, nprobe=4 if inverted else None)
        sims, want_i = built.search(prepared, 10)
        assert d.dtype == np.float32 and i.dtype == np.int64
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(d, np.float32(4) - sims)
    assert builds["ivf"][0].nprobe == 4
    d, i = read_faiss_index(tmp_path / "pq.faiss", index.pq).search(queries, 300)
    _assert_same_ranking_up_to_ties(*index.search(queries, 300), 4 - d, i, 4)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


def test_faiss_files_are_checked(rng, tmp_path):
    z, codes, _ = dyadic_problem(rng, m=4, k=16, d=3, n=50, q=1)
    index = PQIndex(z, 4).add(codes)
    write_faiss_index(index.to_faiss(), tmp_path / "x.faiss")
    garbage = tmp_path / "garbage.faiss"
    garbage.write_bytes(b"not an index at all")
    with pytest.raises(FileFormatError, match="garbage.faiss: neither a PQIndex .npz nor a faiss"):
        read_faiss_index(garbage, index.pq)
    with pytest.raises(ValueError, match="not built with this model in original mode"):
        read_faiss_index(tmp_path / "x.faiss", ProductQuantizer(z * 2, 4))
    with pytest.raises(ValueError, match="in consistent mode .its codebook differs"):
        read_faiss_index(tmp_path / "x.faiss", ProductQuantizer(z, 4, "consistent"))
    with pytest.raises(ValueError, match="not built with this model"):  # another M
        read_faiss_index(tmp_path / "x.faiss", ProductQuantizer(z, 2))
    with pytest.raises(FileNotFoundError, match="index not found: .*absent"):
        is_pqindex_file(tmp_path / "absent")
    index.save(tmp_path / "db.npz")
    assert is_pqindex_file(tmp_path / "db.npz")
    assert open_index(tmp_path / "x.faiss") is None  # a faiss file opens with its model
    back = open_index(tmp_path / "db.npz")
    assert isinstance(back, PQIndex) and back.ntotal == 50


def test_open_index_binds_a_file_to_its_model(tiny_config, tmp_path):
    from gpq_keras.model import GPQ

    a, b = GPQ(tiny_config), GPQ(tiny_config)
    features = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
    index = PQIndex.from_model(a).add(features)
    index.save(tmp_path / "db.npz")
    write_faiss_index(index.to_faiss(), tmp_path / "db.faiss")
    assert open_index(tmp_path / "db.npz", a).ntotal == 40
    with pytest.raises(ValueError, match="built with another model"):
        open_index(tmp_path / "db.npz", b)
    opened = open_index(tmp_path / "db.faiss", a)
    assert isinstance(opened, FaissFileIndex) and opened.pq.mode == index.mode == "consistent"
    queries = features[:4] + 0.1
    d, i = opened.search(queries, 5)
    want_d, want_i = index.search(queries, 5)
    np.testing.assert_allclose(d, want_d, atol=2e-5)  # the same ranking (ties in faiss' order)
    exact = np.take_along_axis(index.distances(queries), i, axis=1)
    np.testing.assert_allclose(d, exact, atol=2e-5)
    with pytest.raises(ValueError, match="not built with this model in consistent mode"):
        open_index(tmp_path / "db.faiss", b)
    with pytest.raises(ValueError, match="in original mode"):
        open_index(tmp_path / "db.faiss", a, mode="original")
    with pytest.raises(FileNotFoundError, match="index not found"):
        open_index(tmp_path / "absent.npz", a)
