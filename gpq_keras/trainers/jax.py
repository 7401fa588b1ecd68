"""GPQ's step on Keras' JAX backend: `jax.value_and_grad` of a pure function of the variables'
values.

Keras' JAX trainer calls `train_step(state, data)` with state = (trainable, non-trainable,
optimizer, metrics variables' values) and expects (logs, new state). `compute_losses` runs inside a
`keras.StatelessScope` over those values; batch norm's moving statistics come back as the new
non-trainable values.

Under a `keras.distribution.DataParallel` (`--strategy data-parallel`) Keras lays the variables out
on every device and splits each `fit` batch over them: the step compiled over that global batch is
the step of one device. `predict` and `evaluate` take each batch whole, replicated on the devices,
as their last batch need not split evenly.
"""

import contextlib

import jax
import keras


@contextlib.contextmanager
def whole_batches():
    """No Keras distribution inside: batches are not split over the devices (a `DataParallel`
    would refuse a batch that does not split evenly); the variables stay where they are."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


class JAXTrainer:
    """`GPQ`'s training plumbing on JAX (a mixin; see `gpq_keras.trainers`)."""

    input_pipeline = "numpy"

    def predict(self, *args, **kwargs):
        """Keras' `predict`, each batch whole (`whole_batches`)."""
        with whole_batches():
            return super().predict(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`, each batch whole (`whole_batches`)."""
        with whole_batches():
            return super().evaluate(*args, **kwargs)

    @contextlib.contextmanager
    def weights_kept_on_error(self):
        """Put the weights back when `predict` fails mid-stream (a bad image file): Keras' JAX
        trainer takes them out of the variables while it predicts (and donates them to each step),
        and an error there would leave the model without them."""
        variables = self.trainable_variables + self.non_trainable_variables
        values = [v.value for v in variables]  # references: JAX arrays are immutable
        try:
            yield
        except BaseException:
            self.jax_state_sync()  # the state after the last batch predicted, if one was
            if not any(value.is_deleted() for value in values):  # it failed before a step ran
                for variable, value in zip(variables, values):
                    variable.assign(value)
            raise

    def train_step(self, state, data):
        """One optimizer step on a `fit` batch -> (the running losses, the new state)."""
        trainable, non_trainable, optimizer_state, metrics_state = state
        labeled, unlabeled, labels = self._training_batch(data)
        (_, (losses, non_trainable)), grads = self._value_and_grad(
            trainable, non_trainable, optimizer_state, labeled, unlabeled, labels
        )
        trainable, optimizer_state = self.optimizer.stateless_apply(
            optimizer_state, grads, trainable
        )
        logs, metrics_state = self._stateless_record(metrics_state, losses)
        return logs, (trainable, non_trainable, optimizer_state, metrics_state)

    def test_step(self, state, data):
        """The losses of an `evaluate` batch -> (the running losses, the new state)."""
        trainable, non_trainable, metrics_state = state
        labeled, unlabeled, labels = self._evaluation_batch(data)
        _, (losses, non_trainable) = self._stateless_losses(
            trainable, non_trainable, (), labeled, unlabeled, labels, training=False
        )
        logs, metrics_state = self._stateless_record(metrics_state, losses)
        return logs, (trainable, non_trainable, metrics_state)

    def gradients_of_batch(self, labeled, unlabeled, labels):
        """(losses, gradients of losses["loss"]) of one batch, jitted as `fit` compiles the step;
        batch norm's moving statistics are updated as a training step updates them."""
        trainable = [v.value for v in self.trainable_variables]
        non_trainable = [v.value for v in self.non_trainable_variables]

        def step(trainable, non_trainable, labeled, unlabeled, labels):
            return self._value_and_grad(trainable, non_trainable, (), labeled, unlabeled, labels)

        (_, (losses, non_trainable)), grads = jax.jit(step)(
            trainable, non_trainable, labeled, unlabeled, labels
        )
        for variable, value in zip(self.non_trainable_variables, non_trainable):
            variable.assign(value)
        return losses, grads

    def gather_global_batch(self, *tensors):
        """The global batch is this batch: one process, one program over all devices."""
        return tensors

    def checked_batch(self, batch):
        """Compiled steps have no cheap check: the input pipelines check the class ids
        beforehand."""
        return batch

    def _stateless_losses(
        self, trainable, non_trainable, optimizer_state, labeled, unlabeled, labels, training
    ):
        """compute_losses on the given variable values -> (loss to differentiate, (losses, new
        non-trainable values)): a pure function, as `jax.value_and_grad` needs."""
        variables = self.trainable_variables + self.non_trainable_variables
        mapping = list(zip(variables, list(trainable) + list(non_trainable)))
        if optimizer_state:
            mapping += list(zip(self.optimizer.variables, optimizer_state))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            losses = self.compute_losses(labeled, unlabeled, labels, training=training)
            loss = losses["loss"]
            if training and optimizer_state:
                loss = self.optimizer.scale_loss(loss)  # the loss scale of a LossScaleOptimizer
        updated = [scope.get_current_value(v) for v in self.non_trainable_variables]
        non_trainable = [old if new is None else new for old, new in zip(non_trainable, updated)]
        return loss, (losses, non_trainable)

    def _value_and_grad(
        self, trainable, non_trainable, optimizer_state, labeled, unlabeled, labels
    ):
        def loss_fn(trainable_values):
            return self._stateless_losses(
                trainable_values,
                non_trainable,
                optimizer_state,
                labeled,
                unlabeled,
                labels,
                training=True,
            )

        return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

    def _stateless_record(self, metrics_state, losses):
        """`_record` on the given tracker values -> (logs, new tracker values)."""
        mapping = list(zip(self.metrics_variables, metrics_state))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._record(losses)
        updated = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, [old if new is None else new for old, new in zip(metrics_state, updated)]
