"""GPQ's step on Keras' PyTorch backend: `torch.autograd.grad` of the loss in the variables'
tensors, eagerly (or under `torch.compile` with `compile(jit_compile=True)`).

Keras' torch trainer (`keras.src.backend.torch.trainer.TorchTrainer`, the `keras.Model` of this
backend) calls `train_step(data)` with autograd on, as TensorFlow's calls it under a tape, and
`test_step(data)` under `torch.no_grad()`. Its variables hold torch tensors (`requires_grad` for the
trainable ones), so the gradient of `compute_losses` is the autograd gradient in those tensors;
batch norm's moving statistics are assigned in place during the forward pass, outside autograd.
"""

import contextlib

import torch
from keras import ops


class TorchTrainer:
    """`GPQ`'s training plumbing on PyTorch (a mixin over Keras' `TorchTrainer`; see
    `gpq_keras.trainers`)."""

    input_pipeline = "numpy"

    def weights_kept_on_error(self):
        """`predict` keeps the weights in the variables on this backend: nothing to put back."""
        return contextlib.nullcontext()

    def train_step(self, data):
        """One optimizer step on a `fit` batch -> the running losses."""
        labeled, unlabeled, labels = self._training_batch(data)
        losses, grads = self._autograd_gradients(labeled, unlabeled, labels, scaled=True)
        with torch.no_grad():
            self.optimizer.apply(grads, self.trainable_variables)
        return self._record(losses)

    def test_step(self, data):
        """The losses of an `evaluate` batch (Keras runs it under `torch.no_grad()`)."""
        labeled, unlabeled, labels = self._evaluation_batch(data)
        losses = self.compute_losses(labeled, unlabeled, labels, training=False)
        return self._record(losses)

    def gradients_of_batch(self, labeled, unlabeled, labels):
        """(losses, gradients of losses["loss"]) of one batch, as `train_step` computes them;
        batch norm's moving statistics are updated as a training step updates them."""
        with torch.enable_grad():
            return self._autograd_gradients(labeled, unlabeled, labels)

    def gather_global_batch(self, *tensors):
        """One process, one device: the global batch is this batch."""
        return tensors

    def checked_batch(self, batch):
        """The batch (labeled, unlabeled, labels) as torch tensors, its class ids checked.

        An id outside [0, num_classes) would become an all-zero row of Y and silently drop its image
        out of the N-pair and classification losses; here it raises a ValueError before any
        variable changes. Eagerly only (not under `torch.compile`), where the check is cheap.
        """
        batch = tuple(None if t is None else ops.convert_to_tensor(t) for t in batch)
        labels = batch[2]
        if len(labels.shape) == 1 and not self.jit_compile and labels.shape[0]:
            low, high = torch.aminmax(labels.detach())
            classes = self.gpq_config.num_classes
            if int(low) < 0 or int(high) >= classes:
                raise ValueError(
                    f"GPQ: a label is outside the class ids [0, {classes}) of this model "
                    f"(got ids from {int(low)} to {int(high)})"
                )
        return batch

    def _autograd_gradients(self, labeled, unlabeled, labels, scaled=False):
        """(losses, detached, and the gradients of loss in `trainable_variables`' order), or of
        optimizer.scale_loss(loss) (the loss scale of a LossScaleOptimizer) when `scaled`.
        A variable the loss does not reach gets a zero gradient."""
        losses = self.compute_losses(labeled, unlabeled, labels, training=True)
        loss = losses["loss"]
        if scaled:
            loss = self.optimizer.scale_loss(loss)
        tensors = [v.value for v in self.trainable_variables]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True) if tensors else ()
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
        return {name: value.detach() for name, value in losses.items()}, grads
