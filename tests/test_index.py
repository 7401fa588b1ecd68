"""`PQIndex`: distances, search, adding items and building from a model, against the original's
loops (NumPy float64)."""

import numpy as np
import original_retrieval as original
import pytest
from numpy_reference import intra_norm
from retrieval_fakes import dyadic_problem

from gpq_keras.retrieval import AddedFiles, PQIndex, ProductQuantizer


def codes_of(features, codebook, num_subspaces):
    return ProductQuantizer(codebook, num_subspaces).encode(features)


def distances_of(queries, codes, codebook, num_subspaces, mode="original"):
    return PQIndex(codebook, num_subspaces, mode).add(codes).distances(queries)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- distances ------------------------------------------------------------------------------------


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


# --- ranking --------------------------------------------------------------------------------------


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


# --- adding items ---------------------------------------------------------------------------------


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


# --- from a model ---------------------------------------------------------------------------------


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


def test_an_index_refuses_another_models_features(tiny_config):
    from gpq_keras.model import GPQ

    a, b = GPQ(tiny_config), GPQ(tiny_config)
    index = PQIndex.from_model(a)
    assert index.model_fingerprint == a.fingerprint != b.fingerprint
    index.check_model(a)
    with pytest.raises(ValueError, match="built with another model"):
        index.check_model(b)


def test_add_files_encodes_image_files_chunk_by_chunk(tiny_config, tmp_path, capsys):
    import tensorflow as tf

    from gpq_keras.data.images import decode_images
    from gpq_keras.model import GPQ

    model = GPQ(tiny_config)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):  # any size: decoded at the model's 16 x 16
        height, width = rng.integers(8, 40, 2)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(pixels))
    labels = np.arange(5) % 2
    index = PQIndex.from_model(model)
    assert index.add_files(paths, labels=labels, chunk_size=2, verbose=1) == AddedFiles(5, [], [])
    assert "5/5" in capsys.readouterr().out  # the progress bar
    want = PQIndex.from_model(model)
    for start in range(0, 5, 2):
        chunk = paths[start : start + 2]
        want.add(model.encode(decode_images(chunk, (16, 16))), sources=chunk)
    np.testing.assert_array_equal(index.codes, want.codes)
    assert index.sources.tolist() == paths and index.ids.tolist() == list(range(5))
    np.testing.assert_array_equal(index.labels, labels)
    assert PQIndex.from_model(model).add_files([]) == AddedFiles(0, [], [])
    with pytest.raises(ValueError, match=r"add_files needs an index made by PQIndex.from_model"):
        PQIndex(model.codebook, 3).add_files(paths)
