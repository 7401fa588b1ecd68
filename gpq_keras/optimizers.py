"""GPQ's optimizers: the original's Adam on its staircase schedule, and Adam with a learning rate
per variable (a slower backbone than head).

```python
optimizer = default_optimizer(config)  # Adam(2e-4 * 0.95**(step // 100), beta_1=0.5)
optimizer = default_optimizer(config, {"conv0/kernel": 0.1})  # that variable at a tenth of the rate
```
"""

import keras


def learning_rate_schedule(config):
    """lr = learning_rate * decay_rate ** floor(step / decay_steps) (the original's staircase)."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, config.decay_steps, config.decay_rate, staircase=True
    )


def default_optimizer(config, learning_rate_multipliers=None):
    """Adam(beta_1=0.5, epsilon=1e-8) on the staircase schedule, as the original trains; with
    `learning_rate_multipliers` ({variable path: R}) a `ScaledAdam` that steps those variables at R
    times the rate."""
    options = {"beta_1": config.beta_1, "epsilon": config.epsilon}
    if learning_rate_multipliers:
        return ScaledAdam(
            learning_rate_schedule(config),
            learning_rate_multipliers=learning_rate_multipliers,
            **options,
        )
    return keras.optimizers.Adam(learning_rate_schedule(config), **options)


@keras.saving.register_keras_serializable(package="gpq_keras")
class ScaledAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose step for some variables uses R times the learning rate.

    Scaling a gradient would not do it: Adam's step m / sqrt(v) does not change when the gradient
    is scaled. Here the rate itself is: `update_step(g, v, lr)` runs Adam's with lr * R(v), so a
    backbone fine-tunes slower than the head (`GPQ(backbone_learning_rate_multiplier=R)`). On every
    backend, since Keras' TensorFlow and JAX optimizers both step one variable at a time through
    `update_step`.

    Args:
        learning_rate_multipliers: {variable path: R >= 0} (`variable.path`, e.g. "conv0/kernel");
            other variables step at the learning rate. Other args: as `keras.optimizers.Adam`.
    """

    def __init__(self, *args, learning_rate_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        multipliers = dict(learning_rate_multipliers or {})
        for path, value in multipliers.items():
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(
                    f"ScaledAdam: the learning-rate multiplier of {path!r} must be a finite "
                    f"number >= 0; got {value!r}"
                )
        self.learning_rate_multipliers = {str(k): float(v) for k, v in multipliers.items()}
        self._scales = []

    def build(self, var_list):
        super().build(var_list)
        self._scales = [self.learning_rate_multipliers.get(v.path, 1.0) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scales[self._get_variable_index(variable)]
        if scale != 1.0:
            learning_rate = learning_rate * scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "learning_rate_multipliers": self.learning_rate_multipliers}
