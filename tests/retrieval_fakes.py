"""Small PQ problems shared by the retrieval tests."""

import numpy as np

from gpq_keras.retrieval import PQIndex

DYADIC = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


def dyadic_problem(rng, m, k, d, n, q):
    """Codebook and queries in multiples of 1/2, so every dot product and distance is exact in
    float32 and many distances tie (equal codes and different codes with equal sums)."""
    z = rng.choice(DYADIC, size=(k, m * d)).astype(np.float32)
    codes = rng.integers(0, k, size=(n, m)).astype(np.uint8)
    dup = min(10, n // 2)
    codes[n // 2 : n // 2 + dup] = codes[:dup]  # duplicated codes
    queries = rng.choice(DYADIC, size=(q, m * d)).astype(np.float32)
    return z, codes, queries


def named_index(rng, ids=None):
    """Three adds of 4 + 3 + 5 items with int labels, sources and class names (optionally custom
    ids)."""
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
