"""`ProductQuantizer`: codes and look-up tables of a GPQ codebook against the original's loops
(NumPy float64)."""

import numpy as np
import original_retrieval as original
import pytest
from numpy_reference import intra_norm

from gpq_keras.retrieval import ProductQuantizer, intra_normalize_np


def codes_of(features, codebook, num_subspaces):
    return ProductQuantizer(codebook, num_subspaces).encode(features)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


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
    # Scaling Z or a feature sub-vector does not change the codes (normalised away / arg-max).
    np.testing.assert_array_equal(codes_of(features * 2.0, z * 5.0, 4), codes)


def test_encode_ties_pick_the_lowest_codeword():
    z = np.array(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32
    )  # M=1, duplicate words
    codes = codes_of(np.array([[2.0, 0.1], [0.0, 3.0]], np.float32), z, 1)
    np.testing.assert_array_equal(codes[:, 0], [0, 2])


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_assignment_codebook_and_centroids_are_what_codes_and_distances_use(rng, mode):
    z = rng.standard_normal((16, 4 * 5)).astype(np.float32) * 3
    pq = ProductQuantizer(z, 4, mode)
    assign = pq.assignment_codebook
    assert assign.shape == (4, 5, 16) and assign.dtype == np.float32
    want = intra_norm(z, 4).reshape(16, 4, 5).transpose(1, 2, 0)  # (M, d, K) in both modes
    np.testing.assert_allclose(assign, want, rtol=1e-6, atol=1e-7)
    features = rng.standard_normal((50, 20)).astype(np.float32)
    scores = np.matmul(features.reshape(50, 4, 5).transpose(1, 0, 2), assign)  # (M, N, K)
    np.testing.assert_array_equal(pq.encode(features), scores.argmax(-1).T)
    centroids = pq.centroids  # (M, K, d): faiss' layout of the codewords distances use
    assert centroids.shape == (4, 16, 5) and centroids.dtype == np.float32
    words = intra_norm(z, 4) if mode == "consistent" else z
    np.testing.assert_allclose(centroids[2, 7], words[7, 10:15], rtol=1e-6)
    np.testing.assert_array_equal(centroids.transpose(1, 0, 2).reshape(16, 20), pq.words)
    for view in (assign, centroids):
        with pytest.raises(ValueError, match="read-only"):
            view[0, 0, 0] = 1.0
