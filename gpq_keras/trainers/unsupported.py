"""The trainer of a Keras backend GPQ has no gradient step for: inference only."""

import keras


class UnsupportedTrainer:
    """Mixed into `GPQ` on a backend without a GPQ trainer: the model predicts, but does not
    train."""

    input_pipeline = "numpy"

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError(
            "GPQ trains on Keras' tensorflow and jax backends; "
            f"KERAS_BACKEND={keras.config.backend()} has no GPQ training step"
        )

    train_step = test_step = gradients_of_batch = _refuse

    def gather_global_batch(self, *tensors):
        return tensors

    def checked_batch(self, batch):
        return batch
