"""GPQ's step on Keras' TensorFlow backend: a tape on the variables, and `tf.distribute` replicas.

Under a strategy with N replicas, each replica computes the objective of its slice of the global
batch with the whole batch's positives and negatives (`gather_global_batch`), and the optimizer sums
the replicas' gradients: scaling each replica's loss by 1 / N makes that sum the gradient of the
whole batch's loss on one device.
"""

import contextlib

import tensorflow as tf
from keras import ops


def replica_context():
    """The `tf.distribute` replica context of a step with more than one replica, else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def num_replicas():
    context = replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def mean_over_replicas(losses):
    """The losses of the global batch (the mean of the replicas' equal-sized slices), to report."""
    context = replica_context()
    if context is None:
        return losses
    names = list(losses)
    values = context.all_reduce(
        tf.distribute.ReduceOp.MEAN, [tf.stop_gradient(losses[n]) for n in names]
    )
    return dict(zip(names, values))


class TensorFlowTrainer:
    """`GPQ`'s training plumbing on TensorFlow (a mixin; see `gpq_keras.trainers`)."""

    input_pipeline = "tf.data"

    def weights_kept_on_error(self):
        """`predict` keeps the weights in the variables on this backend: nothing to put back."""
        return contextlib.nullcontext()

    def train_step(self, data):
        """One optimizer step on a `fit` batch -> the running losses."""
        labeled, unlabeled, labels = self._training_batch(data)
        losses, grads = self._tape_gradients(labeled, unlabeled, labels, scale=1.0 / num_replicas())
        self.optimizer.apply(grads, self.trainable_variables)
        return self._record(mean_over_replicas(losses))

    def test_step(self, data):
        """The losses of an `evaluate` batch."""
        labeled, unlabeled, labels = self._evaluation_batch(data)
        losses = self.compute_losses(labeled, unlabeled, labels, training=False)
        return self._record(mean_over_replicas(losses))

    def gradients_of_batch(self, labeled, unlabeled, labels):
        """(losses, gradients of losses["loss"]) of one batch, as `train_step` computes them."""
        return self._tape_gradients(labeled, unlabeled, labels)

    def gather_global_batch(self, *tensors):
        """Float32 matrices (B, D_i) of this replica -> those of the global batch (N*B, D_i),
        replicas in order, in one all-gather; gradients flow back to each replica's own rows. One
        replica: the tensors themselves."""
        context = replica_context()
        if context is None:
            return tensors
        widths = [int(t.shape[-1]) for t in tensors]
        packed = context.all_gather(tf.concat(tensors, axis=-1), axis=0)
        packed = tf.ensure_shape(packed, [None, sum(widths)])
        return tuple(tf.split(packed, widths, axis=-1))

    def checked_batch(self, batch):
        """The batch (labeled, unlabeled, labels), made to wait for a check of the class ids.

        An id outside [0, num_classes) would become an all-zero row of Y and silently drop its image
        out of the N-pair and classification losses; here it stops the step before any variable
        changes. Outside XLA only, where the check is cheap.
        """
        labels = batch[2]
        if len(labels.shape) != 1 or self.jit_compile:
            return batch
        classes = self.gpq_config.num_classes
        message = f"GPQ: a label is outside the class ids [0, {classes}) of this model"
        checks = [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(
                ops.cast(labels, "int64"), tf.constant(classes, "int64"), message=message
            ),
        ]
        with tf.control_dependencies(checks):
            return tuple(None if t is None else tf.identity(t) for t in batch)

    def _tape_gradients(self, labeled, unlabeled, labels, scale=None):
        """(losses, gradients of loss), or of optimizer.scale_loss(scale * loss) given a scale."""
        with tf.GradientTape() as tape:
            losses = self.compute_losses(labeled, unlabeled, labels, training=True)
            loss = losses["loss"]
            if scale is not None:
                loss = self.optimizer.scale_loss(loss * scale)
        return losses, tape.gradient(loss, self.trainable_variables)
