"""Ranking kernels: sort keys, top-k and distances as pure functions of tables, codes and k."""

import numpy as np
import pytest

from gpq_keras.retrieval import kernels, smallest_k, sort_keys


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


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def _exact_problem(rng, n=300, q=9, m=3, k=8):
    """Tables and codes in multiples of 1/2: every sum is exact in float32; many distances tie."""
    tables = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], size=(q, m, k)).astype(np.float32)
    codes = rng.integers(0, k, size=(n, m)).astype(np.uint8)
    want = tables[np.arange(q)[:, None, None], np.arange(m), codes[None]].astype(np.float64).sum(-1)
    return tables, codes, want  # want (Q, N) float64


def _stable_top_k(dist, k):
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def test_sort_keys_decode_back_to_distances_and_positions(rng):
    dist = rng.standard_normal((4, 50)).astype(np.float32)
    dist[0, 3] = -0.0
    keys = sort_keys(dist, offset=100)
    np.testing.assert_array_equal(kernels.decode_distances(keys), np.where(dist == 0, 0, dist))
    np.testing.assert_array_equal(
        kernels.key_positions(keys), np.broadcast_to(np.arange(100, 150), (4, 50))
    )
    positions = rng.permutation(50)[None].repeat(4, 0)
    np.testing.assert_array_equal(
        kernels.key_positions(sort_keys(dist, positions=positions)), positions
    )
    with pytest.raises(ValueError, match="C-contiguous int64"):
        sort_keys(dist, out=np.empty((4, 50), np.int32))


def test_table_distances_gathered_distances_and_onehot_blocks_agree(rng):
    tables, codes, want = _exact_problem(rng)
    out = np.empty((len(tables), len(codes)), np.float32)
    whole = kernels.table_distances(tables, [kernels.onehot_codes(codes, 8)], out.copy())
    lazy = kernels.onehot_blocks(codes, 8, block_size=64)
    assert len(lazy) == 5 and all(callable(block) for block in lazy)
    blocks = kernels.table_distances(tables, lazy, out)
    gathered = kernels.gathered_distances(tables, codes[None].repeat(len(tables), 0))
    for got in (whole, blocks, gathered):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    onehot = kernels.onehot_codes(codes[:2], 8)
    assert onehot.shape == (24, 2) and onehot.sum() == 6 and onehot[8 + codes[1, 1], 1] == 1


@pytest.mark.parametrize("k", [1, 17, 300])
def test_ranked_keys_and_blockwise_top_k_are_the_stable_top_k(rng, k):
    tables, codes, want = _exact_problem(rng)
    want_d, want_i = _stable_top_k(want, k)
    buffer = np.empty((20, 300), np.int64)
    ranked = kernels.ranked_keys(want.astype(np.float32), k, out=buffer)
    assert (ranked.base is buffer) == (k == 300)  # the whole ranking sorts the buffer in place
    blockwise = kernels.blockwise_top_k(tables, codes, k, block_size=64, chunk_elements=64 * 4)
    for keys in (ranked, blockwise):
        np.testing.assert_array_equal(kernels.key_positions(keys), want_i)
        np.testing.assert_array_equal(kernels.decode_distances(keys), want_d.astype(np.float32))
