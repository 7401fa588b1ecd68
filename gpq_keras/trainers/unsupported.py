"""The trainer of a Keras backend GPQ has no gradient step for: inference only."""

import contextlib

import keras


class UnsupportedTrainer:
    """Mixed into `GPQ` on a backend without a GPQ trainer: the model predicts, but does not
    train."""

    input_pipeline = "numpy"

    def weights_kept_on_error(self):
        """`predict` keeps the weights in the variables on this backend: nothing to put back."""
        return contextlib.nullcontext()

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError(
            "GPQ trains on Keras' tensorflow, jax and torch backends; "
            f"KERAS_BACKEND={keras.config.backend()} has no GPQ training step"
        )

    train_step = test_step = gradients_of_batch = _refuse

    def gather_global_batch(self, *tensors):
        return tensors

    def checked_batch(self, batch):
        return batch
