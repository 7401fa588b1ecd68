"""GPQ's training objective: N-pair PQ loss, classification loss, subspace entropy mini-max loss.

Labels are given as a float matrix Y of shape (B, classes): one-hot or multi-hot.
"""

from keras import ops

from gpq_keras.config import L2_EPSILON
from gpq_keras.layers import intra_normalize

_LOG_EPSILON = 1e-5  # the original's guard inside log(p + eps)


def _l2_normalize(x):
    return intra_normalize(x, 1)  # one sub-space: the whole vector


def _row_normalize(y):
    return y / ops.maximum(ops.sum(y, axis=-1, keepdims=True), L2_EPSILON)


def _soft_cross_entropy(targets, logits):
    """mean_b of -sum_c targets[b, c] log softmax(logits)[b, c]."""
    return ops.mean(-ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1))


def n_pair_pq_loss(
    labels,
    features,
    descriptors,
    num_subspaces,
    reg_lambda=0.002,
    all_labels=None,
    all_descriptors=None,
):
    """N-pair product quantisation loss.

    S = row-normalised Y Y^T (items sharing a label are positives; an unlabelled row contributes 0);
    logits = M * l2n(f) @ l2n(q)^T; loss = mean_b CE(S_b, softmax(logits_b))
    + 0.25 * reg_lambda * (mean ||f||^2 + mean ||q||^2).

    Under `tf.distribute` each replica holds a slice of the batch: given `all_labels` and
    `all_descriptors` (the whole batch, all replicas' slices gathered), the rows b are this
    replica's images and the columns (positives and negatives) the whole batch, so the mean over
    replicas of this loss is the loss of the whole batch on one device.

    Args:
        labels: Y, (B, classes) one-hot or multi-hot.
        features: f, (B, M*d) intra-normalised features of the labeled images.
        descriptors: q, (B, M*d) their soft-quantised descriptors.
        num_subspaces: M.
        reg_lambda: weight of the norm regulariser.
        all_labels, all_descriptors: Y and q of the whole batch (N*B rows); default `labels`,
            `descriptors`.
    Returns:
        A scalar.
    """
    labels = ops.cast(labels, features.dtype)
    all_labels = labels if all_labels is None else ops.cast(all_labels, features.dtype)
    all_descriptors = descriptors if all_descriptors is None else all_descriptors
    similarity = _row_normalize(ops.matmul(labels, ops.transpose(all_labels)))
    regulariser = (
        0.25
        * reg_lambda
        * (
            ops.mean(ops.sum(ops.square(features), axis=-1))
            + ops.mean(ops.sum(ops.square(descriptors), axis=-1))
        )
    )
    logits = num_subspaces * ops.matmul(
        _l2_normalize(features), ops.transpose(_l2_normalize(all_descriptors))
    )
    return _soft_cross_entropy(similarity, logits) + regulariser


def classification_loss(labels, logits):
    """Softmax cross-entropy of the subspace classifier.

    Args:
        labels: Y, (B, classes) one-hot; multi-hot rows are normalised to sum to one.
        logits: (B, classes).
    Returns:
        A scalar, the mean over the batch.
    """
    return _soft_cross_entropy(_row_normalize(ops.cast(labels, logits.dtype)), logits)


def subspace_entropy_loss(logits):
    """Subspace entropy mini-max loss: mean_b sum_c p log(p + 1e-5), p = softmax(logits).

    This is the negative entropy: minimising it raises the entropy (moves the prototypes C towards
    the unlabeled features); gradient reversal makes the feature extractor lower it.

    Args:
        logits: (B, classes), classifier logits of the unlabeled features.
    Returns:
        A scalar.
    """
    p = ops.softmax(logits, axis=-1)
    return ops.mean(ops.sum(p * ops.log(p + _LOG_EPSILON), axis=-1))
