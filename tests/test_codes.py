"""Code packing: round trips and faiss' bit layout."""

import numpy as np
import pytest

from gpq_keras.retrieval import pack_codes, unpack_codes


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


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
