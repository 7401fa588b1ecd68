"""PQ codes, asymmetric search, files and faiss export against the original's loops (NumPy float64)."""

import os

import numpy as np
import original_retrieval as original
import pytest
from numpy_reference import intra_norm

from gpq_keras.files import FileFormatError
from gpq_keras.retrieval import (
    PQIndex,
    ProductQuantizer,
    intra_normalize_np,
    pack_codes,
    smallest_k,
    sort_keys,
    unpack_codes,
)


def codes_of(features, codebook, num_subspaces):
    return ProductQuantizer(codebook, num_subspaces).encode(features)


def distances_of(queries, codes, codebook, num_subspaces, mode="original"):
    return PQIndex(codebook, num_subspaces, mode).add(codes).distances(queries)


DYADIC = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


def dyadic_problem(rng, m, k, d, n, q):
    """Codebook and queries in multiples of 1/2, so every dot product and distance is exact in float32
    and many distances tie (equal codes and different codes with equal sums)."""
    z = rng.choice(DYADIC, size=(k, m * d)).astype(np.float32)
    codes = rng.integers(0, k, size=(n, m)).astype(np.uint8)
    dup = min(10, n // 2)
    codes[n // 2 : n // 2 + dup] = codes[:dup]  # duplicated codes
    queries = rng.choice(DYADIC, size=(q, m * d)).astype(np.float32)
    return z, codes, queries


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- encoding and distances -----------------------------------------------------------------------------


def test_intra_normalize_np_matches_reference(rng):
    x = rng.standard_normal((7, 12)).astype(np.float32)
    x[0, :4] = 0.0  # a zero sub-vector stays zero (the 1e-12 floor)
    np.testing.assert_allclose(intra_normalize_np(x, 3), intra_norm(x, 3), rtol=1e-6, atol=1e-7)
    assert np.all(intra_normalize_np(x, 3)[0, :4] == 0)


def test_pq_encode_is_the_originals_indexing(rng):
    z = rng.standard_normal((16, 4 * 5)).astype(np.float32) * 3
    features = rng.standard_normal((300, 4 * 5)).astype(np.float32)
    codes = codes_of(features, z, 4)
    want, gaps = original.indexing(z, features, 4), original.indexing_gaps(z, features, 4)
    assert codes.dtype == np.uint8 and codes.shape == (300, 4)
    clear = gaps > 1e-5
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(codes[clear], want[clear])
    # Scaling Z or a feature sub-vector does not change the codes (both are normalised away / arg-max).
    np.testing.assert_array_equal(codes_of(features * 2.0, z * 5.0, 4), codes)


def test_encode_ties_pick_the_lowest_codeword():
    z = np.array(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32
    )  # M=1, duplicate words
    codes = codes_of(np.array([[2.0, 0.1], [0.0, 3.0]], np.float32), z, 1)
    np.testing.assert_array_equal(codes[:, 0], [0, 2])


def test_original_mode_distance_is_the_originals_pqdist(rng):
    z = rng.standard_normal((16, 3 * 4)).astype(np.float32)
    codes = rng.integers(0, 16, size=(200, 3)).astype(np.uint8)
    queries = rng.standard_normal((6, 3 * 4)).astype(np.float32) * 2  # raw, un-normalised queries
    got = distances_of(queries, codes, z, 3, mode="original")
    want = original.pq_dist(z, 3, codes, queries)
    assert got.dtype == np.float32 and got.shape == (6, 200)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tables = ProductQuantizer(z, 3, mode="original").lookup_tables(queries)
    assert tables.shape == (6, 3, 16)
    np.testing.assert_allclose(
        tables[2, 1, 5], 1 - queries[2, 4:8].astype(np.float64) @ z[5, 4:8], rtol=1e-6
    )


def test_consistent_mode_normalises_queries_and_codebook(rng):
    z = rng.standard_normal((8, 3 * 4)).astype(np.float32)
    codes = rng.integers(0, 8, size=(100, 3)).astype(np.uint8)
    queries = rng.standard_normal((5, 3 * 4)).astype(np.float32) * 4
    got = distances_of(queries, codes, z, 3, mode="consistent")
    want = original.pq_dist(intra_norm(z, 3), 3, codes, intra_norm(queries, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.min() >= -1e-5 and got.max() <= 2 * 3 + 1e-5  # sum of M terms 1 - cos in [0, 2]
    with pytest.raises(ValueError, match="retrieval mode in"):
        distances_of(queries, codes, z, 3, mode="cosine")


def test_equal_codes_get_bit_identical_distances(rng):
    z = rng.standard_normal((16, 4 * 3)).astype(np.float32)
    codes = rng.integers(0, 16, size=(500, 4)).astype(np.uint8)
    codes[250:] = codes[:250]
    dist = distances_of(rng.standard_normal((9, 12)).astype(np.float32), codes, z, 4)
    np.testing.assert_array_equal(dist[:, 250:], dist[:, :250])


# --- ranking --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_search_matches_stable_loop_reference_with_ties(rng, mode):
    z, codes, queries = dyadic_problem(rng, m=3, k=4, d=3, n=120, q=7)
    if mode == "consistent":  # one non-zero entry per sub-vector keeps intra-normalisation exact

        def axis_vectors(n):
            out = np.zeros((n, 9), np.float32)
            out[np.arange(n)[:, None], np.arange(3) * 3 + rng.integers(0, 3, (n, 3))] = rng.choice(
                [-2.0, -1.0, 0.5, 4.0], size=(n, 3)
            )
            return out

        z, queries = axis_vectors(4), axis_vectors(7)
    index = PQIndex(z, 3, mode=mode).add(codes)
    pq = index.pq
    want_d = original.pq_dist(pq.words, 3, codes, pq.prepare_queries(queries))
    for k in (1, 5, 37, 120, 125):
        d, i = index.search(queries, k)
        rd, ri = original.stable_top_k(want_d, k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd.astype(np.float32))
    assert len(np.unique(want_d[0])) < 60  # the data really has ties
    # Chunking does not change anything.
    d1, i1 = index.search(queries, 50, chunk_size=1)
    d2, i2 = index.search(queries, 50)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_search_random_data_against_reference(rng):
    z = rng.standard_normal((16, 4 * 6)).astype(np.float32)
    features = rng.standard_normal((400, 24)).astype(np.float32)
    queries = rng.standard_normal((10, 24)).astype(np.float32)
    index = PQIndex(z, 4).add(features)
    want = original.pq_dist(z, 4, index.codes, queries)
    d, i = index.search(queries, 30)
    np.testing.assert_allclose(d, np.sort(want, 1)[:, :30], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want[np.arange(10)[:, None], i], d, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_sort_keys_order_signed_values_and_zero_ties():
    dist = np.array([[0.5, -0.0, -2.0, 0.0, np.float32(1e-45), -1e-45, 3.0, -2.0]], np.float32)
    keys = smallest_k(sort_keys(dist), 8)
    order = keys & np.int64(0xFFFFFFFF)
    np.testing.assert_array_equal(
        order[0], [2, 7, 5, 1, 3, 4, 0, 6]
    )  # -0.0 and +0.0 tie: lower index first
    np.testing.assert_array_equal(
        smallest_k(sort_keys(dist), 3) & np.int64(0xFFFFFFFF), [[2, 7, 5]]
    )


def test_search_pads_and_validates(rng):
    z, codes, queries = dyadic_problem(rng, m=3, k=4, d=3, n=5, q=2)
    index = PQIndex(z, 3).add(codes)
    d, i = index.search(queries, 8)
    assert i.dtype == np.int64 and d.dtype == np.float32
    assert np.all(i[:, 5:] == -1) and np.all(np.isinf(d[:, 5:]))
    with pytest.raises(ValueError, match=r"queries.*\(N, 9\)"):
        index.search(queries[:, :5], 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 9), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="positive int"):
        index.search(queries, 0)
    empty = PQIndex(z, 3)
    assert empty.ntotal == 0 and empty.search(queries, 2)[1].tolist() == [[-1, -1], [-1, -1]]


def test_add_codes_features_ids_and_labels(rng):
    z = rng.standard_normal((8, 6)).astype(np.float32)
    index = PQIndex(z, 2)
    features = rng.standard_normal((20, 6)).astype(np.float32)
    index.add(features[:10], ids=np.arange(100, 110), labels=np.arange(10))
    index.add(codes_of(features[10:], z, 2), ids=np.arange(200, 210), labels=np.arange(10))
    assert index.ntotal == 20 and len(index) == 20
    np.testing.assert_array_equal(index.codes, codes_of(features, z, 2))
    _, ids = index.search(features[:1], 20)
    assert set(ids[0]) == set(range(100, 110)) | set(range(200, 210))
    with pytest.raises(ValueError, match="give `ids`"):
        index.add(features[:2], labels=np.arange(2))
    with pytest.raises(ValueError, match="give `labels`"):
        index.add(features[:2], ids=np.arange(2))
    with pytest.raises(ValueError, match=r"codes \(N, 2\) or features \(N, 6\)"):
        index.add(features[0])
    with pytest.raises(ValueError, match=r"codeword indices in \[0, 8\)"):
        PQIndex(z, 2).add(np.full((1, 2), 9, np.uint8))
    with pytest.raises(ValueError, match="divisible"):
        PQIndex(z, 4)
    with pytest.raises(ValueError, match="power of two"):
        PQIndex(z[:6], 2)
    with pytest.raises(ValueError, match="read-only"):
        index.codes[0, 0] = 1


# --- packing and faiss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [1, 3, 4, 5, 8])
def test_pack_unpack_round_trip(rng, nbits):
    codes = rng.integers(0, 1 << nbits, size=(50, 7)).astype(np.uint8)
    packed = pack_codes(codes, nbits)
    assert packed.shape == (50, (7 * nbits + 7) // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, 7, nbits), codes)


@pytest.mark.parametrize("nbits", [3, 4])
def test_packing_is_faiss_layout(rng, nbits):
    import faiss

    m, d, k = 5, 3, 1 << nbits
    pq = faiss.ProductQuantizer(m * d, m, nbits)
    centroids = rng.standard_normal((m, k, d)).astype(np.float32)
    faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
    codes = rng.integers(0, k, size=(40, m)).astype(np.uint8)
    decoded = pq.decode(pack_codes(codes, nbits))
    want = centroids[np.arange(m), codes].reshape(40, m * d)
    np.testing.assert_array_equal(decoded, want)


def _assert_same_ranking_up_to_ties(ours_d, ours_i, faiss_d, faiss_i, m):
    """Equal distances; within each run of equal distances the same ids (faiss orders ties its own way)."""
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


# --- files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["int", "multi", None])
def test_save_load_round_trip(rng, tmp_path, labels):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    index = PQIndex(z, 4, mode="consistent")
    lab = {
        "int": rng.integers(0, 10, 60),
        "multi": rng.integers(0, 2, (60, 5)).astype(np.uint8),
        None: None,
    }[labels]
    index.add(rng.standard_normal((60, 12)).astype(np.float32), ids=np.arange(60) + 7, labels=lab)
    path = tmp_path / "sub" / "db.npz"
    index.save(path)
    assert os.listdir(tmp_path / "sub") == ["db.npz"]  # no temporary file left
    back = PQIndex.load(path)
    assert (back.mode, back.num_subspaces, back.ntotal) == ("consistent", 4, 60)
    np.testing.assert_array_equal(back.codebook, index.codebook)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.ids, index.ids)
    if lab is None:
        assert back.labels is None
    else:
        np.testing.assert_array_equal(back.labels, lab)
        assert back.labels.dtype == lab.dtype
    queries = rng.standard_normal((4, 12)).astype(np.float32)
    for a, b in zip(back.search(queries, 9), index.search(queries, 9)):
        np.testing.assert_array_equal(a, b)
    with np.load(path) as data:  # codes are stored packed: M * log2(K) = 16 bits per item
        assert data["codes"].shape == (60, 2)


def _rewrite(path, reseal=True, **changes):
    """Change keys of an index file; `reseal` recomputes the checksum (a consistent file with a bad key)."""
    from gpq_keras.retrieval import _checksum

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    if reseal and "checksum" in arrays:
        arrays["checksum"] = np.array(_checksum(arrays))
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"format_version": np.array(4)},
            "'format_version' is 4; this gpq_keras reads versions 1 to 3",
        ),
        (
            {"format_version": np.array(0)},
            "'format_version' is 0; this gpq_keras reads versions 1 to 3",
        ),
        ({"format_version": None}, "missing key 'format_version'"),
        ({"format": np.array("something.else")}, "key 'format'"),
        ({"codes": np.zeros((6, 3), np.uint8)}, r"key 'codes' must be uint8 \(N, 2\)"),
        ({"codes": np.zeros((6, 2), np.int64)}, "key 'codes' must be uint8"),
        ({"codebook": np.zeros((16, 12), np.float64)}, "key 'codebook' must be float32"),
        ({"codebook": np.zeros((16, 10), np.float32)}, "key 'codebook'.*divisible"),
        ({"ids": np.arange(5)}, r"key 'ids' must be int64 \(6,\)"),
        ({"mode": np.array("cosine")}, "key 'mode'"),
        ({"labels": np.zeros(4, np.int64)}, "key 'labels'"),
        ({"num_subspaces": np.array(0)}, "key 'num_subspaces'"),
        ({"ids": np.array([0, 1, -1, 3, 4, 5])}, "negative id"),
        ({"ids": np.array([0, 1, 2, 3, 4, 4])}, "duplicated ids"),
        (
            {"codebook": np.zeros((8, 12), np.float32)},
            "key 'codebook' has 8 rows, but nbits=4 needs 16",
        ),
        ({"checksum": None}, "missing key 'checksum'"),
    ],
)
def test_load_refuses_bad_files(rng, tmp_path, changes, message):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    _rewrite(path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        PQIndex.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_corrupt_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(FileFormatError, match="garbage.npz: not a readable .npz"):
        PQIndex.load(garbage)
    index = PQIndex(np.eye(16, 12, dtype=np.float32), 4).add(np.zeros((100, 4), np.uint8))
    index.save(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated.npz: not a readable .npz"):
        PQIndex.load(tmp_path / "truncated.npz")
    with pytest.raises(FileNotFoundError, match="index file not found"):
        PQIndex.load(tmp_path / "absent.npz")


def test_save_keeps_the_old_file_when_writing_fails(rng, tmp_path, monkeypatch):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4).add(
        np.zeros((3, 4), np.uint8)
    )
    index.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["db.npz"]


# --- from a model ---------------------------------------------------------------------------------------


def test_from_model_picks_the_codebook_of_the_mode(tiny_config):
    from gpq_keras.model import GPQ

    model = GPQ(tiny_config.replace(retrieval_mode="original"))
    original = PQIndex.from_model(model)
    assert original.mode == "original"
    np.testing.assert_array_equal(original.codebook, model.codebook)
    consistent = PQIndex.from_model(model, mode="consistent")
    np.testing.assert_allclose(consistent.codebook, model.refined_codebook)
    assert PQIndex.from_model(GPQ(tiny_config)).mode == tiny_config.retrieval_mode == "consistent"
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    original.add_images(images, labels=np.arange(6))
    features = model.encode(images.astype(np.float32))  # pixels: float and uint8 alike
    np.testing.assert_array_equal(original.codes, codes_of(features, model.codebook, 3))
    with pytest.raises(ValueError, match="from_model"):
        PQIndex(model.codebook, 3).add_images(images)


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


def test_a_flipped_byte_is_caught_by_the_checksum(rng, tmp_path):
    path = tmp_path / "db.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4)
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    with np.load(path) as data:
        codes = data["codes"].copy()
    codes[2, 1] ^= 0x10
    _rewrite(path, reseal=False, codes=codes)
    with pytest.raises(FileFormatError, match="checksum does not match"):
        PQIndex.load(path)


def test_a_version_1_file_still_loads(rng, tmp_path):
    path = tmp_path / "v1.npz"
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4, mode="consistent")
    index.add(rng.standard_normal((6, 12)).astype(np.float32), labels=np.arange(6)).save(path)
    _rewrite(
        path,
        reseal=False,
        format_version=np.array(1),
        nbits=None,
        checksum=None,
        model_fingerprint=None,
    )
    back = PQIndex.load(path)
    np.testing.assert_array_equal(back.codes, index.codes)
    assert back.mode == "consistent" and back.model_fingerprint is None


def test_an_index_refuses_another_models_features(tiny_config):
    from gpq_keras.model import GPQ

    a, b = GPQ(tiny_config), GPQ(tiny_config)
    index = PQIndex.from_model(a)
    assert index.model_fingerprint == a.fingerprint != b.fingerprint
    index.check_model(a)
    with pytest.raises(ValueError, match="built with another model"):
        index.check_model(b)


# --- sources and class names ----------------------------------------------------------------------------


def _named_index(rng, ids=None):
    """Three adds of 4 + 3 + 5 items with int labels, sources and class names (optionally custom ids)."""
    index = PQIndex(
        rng.standard_normal((16, 12)).astype(np.float32), 4, class_names=("cat", "dog", "bird")
    )
    sizes, start = (4, 3, 5), 0
    for size in sizes:
        rows = slice(start, start + size)
        index.add(
            rng.standard_normal((size, 12)).astype(np.float32),
            ids=None if ids is None else ids[rows],
            labels=np.arange(start, start + size) % 3,
            sources=[f"images/{i:03d}.png" for i in range(start, start + size)]
            if start
            else np.array([f"images/{i:03d}.png" for i in range(size)]),
        )
        start += size
    return index


def test_sources_and_class_names_round_trip_without_pickle(rng, tmp_path):
    index = _named_index(rng)
    want = np.array([f"images/{i:03d}.png" for i in range(12)])
    assert index.sources.dtype.kind == "U" and index.sources.shape == (12,)
    np.testing.assert_array_equal(index.sources, want)
    assert index.class_names == ["cat", "dog", "bird"]
    with pytest.raises(ValueError, match="read-only"):
        index.sources[0] = "x"
    path = tmp_path / "db.npz"
    index.save(path)
    with np.load(path, allow_pickle=False) as data:  # every key is a plain array
        arrays = {key: data[key] for key in data.files}
    assert int(arrays["format_version"]) == 3
    assert arrays["sources"].dtype.kind == "U" and arrays["class_names"].dtype.kind == "U"
    np.testing.assert_array_equal(arrays["class_names"], ["cat", "dog", "bird"])
    back = PQIndex.load(path)
    np.testing.assert_array_equal(back.sources, want)
    assert back.sources.dtype.kind == "U"
    assert back.class_names == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(back.labels, index.labels)
    np.testing.assert_array_equal(back.codes, index.codes)
    # An index without them writes neither key and loads None.
    plain = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4).add(
        np.zeros((3, 4), np.uint8)
    )
    plain.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as data:
        assert "sources" not in data.files and "class_names" not in data.files
    back = PQIndex.load(tmp_path / "plain.npz")
    assert back.sources is None and back.class_names is None


@pytest.mark.parametrize("custom_ids", [False, True])
def test_sources_for_and_class_names_for_map_search_ids(rng, custom_ids):
    ids = np.array([90, 3, 41, 7, 1000, 12, 5, 66, 8, 30, 2, 77]) if custom_ids else None
    index = _named_index(rng, ids)
    queries = rng.standard_normal((3, 12)).astype(np.float32)
    _, found = index.search(queries, 15)  # 12 items: the last 3 columns are -1
    assert np.all(found[:, 12:] == -1)
    positions = found[:, :12] if ids is None else np.searchsorted(np.sort(ids), found[:, :12])
    if ids is not None:
        positions = np.argsort(ids)[positions]
    sources = index.sources_for(found)
    names = index.class_names_for(found)
    assert sources.shape == names.shape == (3, 15) and sources.dtype.kind == names.dtype.kind == "U"
    np.testing.assert_array_equal(
        sources[:, :12], np.char.add("images/", np.char.zfill(positions.astype(str), 3)) + ".png"
    )
    np.testing.assert_array_equal(sources[:, 12:], "")
    np.testing.assert_array_equal(names[:, :12], np.array(["cat", "dog", "bird"])[positions % 3])
    np.testing.assert_array_equal(names[:, 12:], "")
    some = index.ids[[11, 0]]
    assert index.sources_for(some).tolist() == ["images/011.png", "images/000.png"]
    assert index.class_names_for(some).tolist() == ["bird", "cat"]
    unknown = 4 if custom_ids else 12
    with pytest.raises(ValueError, match=rf"`ids` holds 1 id\(s\) not in the index: \[{unknown}\]"):
        index.sources_for([[index.ids[0], unknown]])
    with pytest.raises(ValueError, match="not in the index"):
        index.class_names_for([-2])
    with pytest.raises(ValueError, match="`ids` must be integer"):
        index.sources_for([0.5])


def test_sources_for_and_class_names_for_need_what_they_map(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    plain = PQIndex(z, 4).add(np.zeros((3, 4), np.uint8), labels=np.arange(3))
    with pytest.raises(ValueError, match="no sources"):
        plain.sources_for([0])
    with pytest.raises(ValueError, match="no class names"):
        plain.class_names_for([0])
    unlabeled = PQIndex(z, 4, class_names=["a"]).add(np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="no labels"):
        unlabeled.class_names_for([0])
    multi = PQIndex(z, 4, class_names=["a", "b"]).add(
        np.zeros((3, 4), np.uint8), labels=np.eye(3, 2, dtype=bool)
    )
    with pytest.raises(ValueError, match="multi-hot"):
        multi.class_names_for([0])


def test_every_add_gives_sources_or_none_does(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    codes = np.zeros((2, 4), np.uint8)
    with_sources = PQIndex(z, 4).add(codes, sources=["a", "b"])
    with pytest.raises(ValueError, match="this index has sources; give `sources` to every `add`"):
        with_sources.add(codes)
    without = PQIndex(z, 4).add(codes)
    with pytest.raises(ValueError, match="items without sources were added before"):
        without.add(codes, sources=["a", "b"])
    with pytest.raises(ValueError, match=r"`sources` must be 2 strings \(shape \(2,\)\)"):
        PQIndex(z, 4).add(codes, sources=["a", "b", "c"])
    with pytest.raises(ValueError, match="`sources` must be strings"):
        PQIndex(z, 4).add(codes, sources=["a", 3])
    with pytest.raises(ValueError, match="not one string"):
        PQIndex(z, 4).add(codes, sources="ab")
    assert (
        with_sources.ntotal == 2 and without.ntotal == 2 and without.sources is None
    )  # failed adds add nothing
    assert with_sources.sources.tolist() == ["a", "b"]


def test_class_names_are_validated(rng):
    z = rng.standard_normal((16, 12)).astype(np.float32)
    codes = np.zeros((3, 4), np.uint8)
    with pytest.raises(ValueError, match=r"`class_names` holds duplicated names: \['a'\]"):
        PQIndex(z, 4, class_names=["a", "b", "a"])
    with pytest.raises(ValueError, match="`class_names` holds an empty name"):
        PQIndex(z, 4, class_names=["a", ""])
    with pytest.raises(ValueError, match="`class_names` must be a sequence of str"):
        PQIndex(z, 4, class_names="abc")
    with pytest.raises(ValueError, match="`class_names` must be str"):
        PQIndex(z, 4, class_names=["a", 1])
    index = PQIndex(z, 4).add(codes, labels=np.array([0, 2, 1]))
    with pytest.raises(
        ValueError,
        match=r"`class_names`: the labels hold class ids 0..2 but `class_names` "
        r"names 2 classes",
    ):
        index.class_names = ["a", "b"]
    assert index.class_names is None  # a refused value changes nothing
    index.class_names = ("a", "b", "c")
    assert index.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"`labels`: the labels hold class ids 3..3"):
        index.add(codes[:1], labels=[3])
    with pytest.raises(ValueError, match=r"`labels`: the labels hold class ids -1..-1"):
        index.add(codes[:1], labels=[-1])
    assert index.ntotal == 3
    index.class_names = None
    assert index.add(codes[:1], labels=[7]).ntotal == 4  # without class names any label goes
    multi = PQIndex(z, 4).add(codes, labels=np.ones((3, 4), np.uint8))
    with pytest.raises(
        ValueError, match=r"multi-hot labels have 4 columns but `class_names` names 3"
    ):
        multi.class_names = ["a", "b", "c"]
    multi.class_names = ["a", "b", "c", "d"]
    named = PQIndex(z, 4, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`labels`: the multi-hot labels have 2 columns"):
        named.add(codes, labels=np.ones((3, 2), np.uint8))
    with pytest.raises(ValueError, match="integer class ids"):
        named.add(codes, labels=np.array(["x", "y", "z"]))


def test_from_model_takes_class_names(tiny_config):
    from gpq_keras.model import GPQ

    index = PQIndex.from_model(GPQ(tiny_config), class_names=["x", "y"])
    assert index.class_names == ["x", "y"]
    with pytest.raises(ValueError, match="duplicated"):
        PQIndex.from_model(GPQ(tiny_config), class_names=["x", "x"])


def _version_2_arrays(index):
    """The arrays `save` wrote in format version 2 (no sources, no class names)."""
    from gpq_keras.retrieval import _checksum

    arrays = {
        "format": np.array("gpq_keras.PQIndex"),
        "format_version": np.array(2, np.int64),
        "mode": np.array(index.mode),
        "num_subspaces": np.array(index.num_subspaces, np.int64),
        "nbits": np.array(index.nbits, np.int64),
        "codebook": index.codebook,
        "codes": pack_codes(index.codes, index.nbits),
        "ids": np.asarray(index.ids),
        "model_fingerprint": np.array(""),
        "labels": index.labels,
    }
    arrays["checksum"] = np.array(_checksum(arrays))
    return arrays


def test_a_version_2_file_still_loads(rng, tmp_path):
    index = PQIndex(rng.standard_normal((16, 12)).astype(np.float32), 4, mode="consistent")
    index.add(
        rng.standard_normal((6, 12)).astype(np.float32),
        ids=np.arange(6) * 5,
        labels=np.arange(6) % 2,
    )
    path = tmp_path / "v2.npz"
    np.savez(path, **_version_2_arrays(index))
    back = PQIndex.load(path)
    assert (back.mode, back.ntotal, back.sources, back.class_names) == ("consistent", 6, None, None)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.ids, index.ids)
    np.testing.assert_array_equal(back.labels, index.labels)
    # Keys of later versions mean nothing in a version 2 file: ignored as before, even malformed.
    arrays = _version_2_arrays(index)
    from gpq_keras.retrieval import _checksum

    arrays["sources"], arrays["class_names"] = np.zeros(2, np.int64), np.array(["a", "a"])
    arrays["checksum"] = np.array(_checksum(arrays))
    np.savez(path, **arrays)
    back = PQIndex.load(path)
    assert back.sources is None and back.class_names is None and back.ntotal == 6


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"sources": np.array(["a", "b"])},
            r"key 'sources' must be unicode strings \(6,\), got <U1 \(2,\)",
        ),
        ({"sources": np.array([["a"]] * 6)}, r"key 'sources' must be unicode strings \(6,\)"),
        ({"sources": np.arange(6)}, "key 'sources' must be unicode"),
        ({"sources": np.array([b"a"] * 6)}, "key 'sources' must be unicode"),
        (
            {"class_names": np.array([["a", "b", "c"]])},
            r"key 'class_names' must be unicode strings \(classes,\)",
        ),
        ({"class_names": np.arange(3)}, "key 'class_names' must be unicode"),
        (
            {"class_names": np.array(["a", "b", "a"])},
            "key 'class_names': `class_names` holds duplicated names",
        ),
        (
            {"class_names": np.array(["a", "", "c"])},
            "key 'class_names': `class_names` holds an empty name",
        ),
        ({"class_names": np.array(["a", "b"])}, "key 'class_names': .*class ids 0..2"),
        ({"class_names": np.zeros(0, "U1")}, "key 'class_names': .*at least one class"),
    ],
)
def test_load_refuses_bad_sources_and_class_names(rng, tmp_path, changes, message):
    path = tmp_path / "db.npz"
    index = PQIndex(
        rng.standard_normal((16, 12)).astype(np.float32), 4, class_names=["a", "b", "c"]
    )
    index.add(
        rng.standard_normal((6, 12)).astype(np.float32),
        labels=np.arange(6) % 3,
        sources=[f"{i}.png" for i in range(6)],
    ).save(path)
    _rewrite(path, **changes)  # resealed: only the key's own check can catch it
    with pytest.raises(FileFormatError, match=message) as info:
        PQIndex.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_class_names_that_do_not_fit_multi_hot_labels(rng, tmp_path):
    path = tmp_path / "db.npz"
    index = PQIndex(
        rng.standard_normal((16, 12)).astype(np.float32), 4, class_names=["a", "b", "c"]
    )
    index.add(np.zeros((4, 4), np.uint8), labels=np.ones((4, 3), np.uint8)).save(path)
    assert PQIndex.load(path).class_names == ["a", "b", "c"]
    _rewrite(path, class_names=np.array(["a", "b"]))
    with pytest.raises(
        FileFormatError, match="key 'class_names': .*multi-hot labels have 3 columns"
    ):
        PQIndex.load(path)
