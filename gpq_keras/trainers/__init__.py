"""Each Keras backend's gradient plumbing for `GPQ`, chosen once, at import, as Keras picks its
trainer.

`GPQ` holds the objective (`compute_losses`) and mixes in `Trainer`, which turns it into steps:

| backend    | module                          | gradient of `compute_losses`                  |
|------------|---------------------------------|-----------------------------------------------|
| tensorflow | `gpq_keras.trainers.tensorflow` | a `tf.GradientTape`; `tf.distribute` replicas |
| jax        | `gpq_keras.trainers.jax`        | `jax.value_and_grad` in Keras' stateless step |
| torch      | `gpq_keras.trainers.torch`      | `torch.autograd.grad` in Keras' torch step    |

Every trainer gives `train_step`, `test_step`, `gather_global_batch`, `gradients_of_batch` (the
losses and gradients of one batch, for `GPQ.loss_and_gradients`), `checked_batch`,
`input_pipeline` (the input pipeline `GPQ.encode` batches arrays with) and `weights_kept_on_error`
(around `predict`: a stream that fails leaves the weights in place).
"""

import keras

BACKEND = keras.config.backend()

if BACKEND == "jax":
    from gpq_keras.trainers.jax import JAXTrainer as Trainer
elif BACKEND == "tensorflow":
    from gpq_keras.trainers.tensorflow import TensorFlowTrainer as Trainer
elif BACKEND == "torch":
    from gpq_keras.trainers.torch import TorchTrainer as Trainer
else:
    from gpq_keras.trainers.unsupported import UnsupportedTrainer as Trainer

__all__ = ["BACKEND", "Trainer"]
