import keras
import numpy as np
import numpy_reference as ref
import pytest
from test_case import gradients

from gpq_keras.losses import classification_loss, n_pair_pq_loss, subspace_entropy_loss

pytestmark = pytest.mark.backends

RNG = np.random.default_rng(1)
M, D, CLASSES, B = 4, 3, 5, 9


def _np(x):
    return float(keras.ops.convert_to_numpy(x))


def _batch():
    f = ref.intra_norm(RNG.normal(size=(B, M * D)), M).astype(np.float32)
    q = ref.intra_norm(f + 0.3 * RNG.normal(size=f.shape), M).astype(np.float32)
    return f, q


@pytest.mark.parametrize("multi_hot", [False, True])
def test_n_pair_pq_loss_matches_numpy(multi_hot):
    f, q = _batch()
    if multi_hot:
        y = (RNG.random((B, CLASSES)) < 0.4).astype(np.float32)
        y[:, 0] = 1.0  # every row has at least one label
    else:
        y = np.eye(CLASSES, dtype=np.float32)[RNG.integers(0, CLASSES, B)]
    loss = _np(n_pair_pq_loss(y, f, q, M, reg_lambda=0.002))
    assert loss == pytest.approx(ref.npq_loss(y, f, q, M, 0.002), rel=1e-5)


@pytest.mark.parametrize("replicas", [2, 3])
def test_n_pair_pq_loss_of_replica_slices_averages_to_the_whole_batch(replicas):
    """Under tf.distribute each replica scores its rows against the gathered batch; the mean over
    replicas is the one-device loss of the whole batch (NumPy float64), and its gradient with
    respect to every row's features and descriptors too (summed over replicas, the loss divided by
    their number)."""
    rng = np.random.default_rng(replicas)
    f = ref.intra_norm(rng.normal(size=(6 * replicas, M * D)), M).astype(np.float32)
    q = ref.intra_norm(f + 0.3 * rng.normal(size=f.shape), M).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, len(f))]
    slices = np.split(np.arange(len(f)), replicas)
    whole = ref.npq_loss(y, f, q, M, 0.002)
    parts = [
        _np(n_pair_pq_loss(y[r], f[r], q[r], M, 0.002, all_labels=y, all_descriptors=q))
        for r in slices
    ]
    assert np.mean(parts) == pytest.approx(whole, rel=1e-5)

    var_f, var_q = keras.Variable(f), keras.Variable(q)
    one = gradients(lambda: n_pair_pq_loss(y, var_f, var_q, M, 0.002), [var_f, var_q])

    def replicas_mean():
        return (
            sum(
                n_pair_pq_loss(
                    y[r],
                    keras.ops.take(var_f, r, axis=0),
                    keras.ops.take(var_q, r, axis=0),
                    M,
                    0.002,
                    all_labels=y,
                    all_descriptors=var_q,
                )
                for r in slices
            )
            / replicas
        )

    split = gradients(replicas_mean, [var_f, var_q])
    for a, b in zip(one, split):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_n_pair_pq_loss_row_without_labels_adds_nothing():
    f, q = _batch()
    y = np.eye(CLASSES, dtype=np.float32)[RNG.integers(0, CLASSES, B)]
    y_blank = y.copy()
    y_blank[0] = 0.0
    full = _np(n_pair_pq_loss(y_blank, f, q, M, reg_lambda=0.0))
    logits = M * ref.l2n(f.astype(np.float64)) @ ref.l2n(q.astype(np.float64)).T
    s = y_blank @ y_blank.T
    s[1:] /= s[1:].sum(1, keepdims=True)
    expected = ref.cross_entropy(s, logits)  # row 0 of S is all zeros: it contributes 0 to the mean
    assert np.isfinite(full)
    assert full == pytest.approx(expected, rel=1e-5)


def test_classification_loss_matches_numpy():
    logits = RNG.normal(size=(B, CLASSES)).astype(np.float32) * 3
    y = np.eye(CLASSES, dtype=np.float32)[RNG.integers(0, CLASSES, B)]
    assert _np(classification_loss(y, logits)) == pytest.approx(ref.cls_loss(y, logits), rel=1e-5)
    multi = y.copy()
    multi[:, 1] = 1.0
    assert _np(classification_loss(multi, logits)) == pytest.approx(
        ref.cls_loss(multi, logits), rel=1e-5
    )


def test_subspace_entropy_loss_matches_numpy_and_bounds():
    logits = RNG.normal(size=(B, CLASSES)).astype(np.float32) * 2
    loss = _np(subspace_entropy_loss(logits))
    assert loss == pytest.approx(ref.entropy_loss(logits), rel=1e-5)
    # Negative entropy: between -log(C) (uniform) and 0 (one-hot).
    uniform = _np(subspace_entropy_loss(np.zeros((2, CLASSES), np.float32)))
    assert uniform == pytest.approx(np.log(1 / CLASSES + 1e-5), rel=1e-5)
    assert -np.log(CLASSES) - 1e-3 < loss < 0
