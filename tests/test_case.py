"""A small KerasHub-style harness: one call runs the standard checks on a layer or a backbone.

Plain pytest helpers (assertions raise AssertionError). `input_data` is one NumPy array; extra call
arguments of a layer (e.g. `prototypes=`) go in `call_kwargs`.
"""

import json
import warnings

import keras
import numpy as np

# Mixed-precision policies checked, and the tolerance of each relative to the output's scale:
# float16 keeps 11 significant bits, bfloat16 only 8.
PRECISION_TOLERANCES = {"mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}


def _numpy(x):
    """A tensor as a NumPy array, 16-bit floats widened to float32."""
    x = keras.ops.convert_to_numpy(x)
    return x.astype(np.float32) if keras.backend.is_float_dtype(x.dtype) else x


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _config_json(config):
    return json.dumps(config, sort_keys=True)


def _call(layer, inputs, call_kwargs):
    return layer(inputs, **(call_kwargs or {}))


def run_serialization_test(instance):
    """get_config -> from_config -> get_config, and serialize -> JSON -> deserialize, give the same
    config.

    A built instance must come back built, with weights of the same shapes.
    """
    cls = type(instance)
    config_json = _config_json(instance.get_config())

    revived = cls.from_config(json.loads(config_json))
    assert type(revived) is cls
    assert _config_json(revived.get_config()) == config_json, "get_config/from_config round trip"

    serialized = json.dumps(keras.saving.serialize_keras_object(instance))
    revived = keras.saving.deserialize_keras_object(json.loads(serialized))
    assert type(revived) is cls
    assert _config_json(revived.get_config()) == config_json, "serialize/deserialize round trip"
    assert revived.built == instance.built, "the build config did not travel"
    assert [tuple(w.shape) for w in revived.weights] == [tuple(w.shape) for w in instance.weights]
    return revived


def _run_training_step(model, input_data, output_shape):
    """Compile with SGD + MSE, fit one batch towards a random target; trainable weights must
    move."""
    target = np.random.default_rng(0).normal(size=output_shape).astype(np.float32)
    before = [_numpy(w) for w in model.trainable_weights]
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():  # a weightless layer still has to run inside a compiled fit
        warnings.filterwarnings("ignore", "The model does not have any trainable weights")
        history = model.fit(input_data, target, batch_size=len(input_data), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all(), history.history
    for weight, old in zip(model.trainable_weights, before):
        assert not np.array_equal(_numpy(weight), old), (
            f"{weight.path} did not change in a training step"
        )


def _train_layer(layer, input_data, output_shape, call_kwargs):
    class LayerModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def call(self, inputs):
            return _call(self.layer, inputs, call_kwargs)

    _run_training_step(LayerModel(), input_data, output_shape)


def run_precision_test(
    cls, init_kwargs, input_data, call_kwargs=None, policies=tuple(PRECISION_TOLERANCES)
):
    """`cls(**init_kwargs, dtype=policy)` for each mixed policy, with the float32 instance's
    weights.

    Output (eager and symbolic) in the policy's compute dtype, every float weight in its variable
    dtype (and every sublayer of a model on the policy), output finite and close to the float32
    output.
    """
    reference = cls(**init_kwargs)
    expected = _numpy(_call(reference, input_data, call_kwargs))
    for name in policies:
        policy = keras.DTypePolicy(name)
        instance = cls(**init_kwargs, dtype=policy)
        _call(instance, input_data, call_kwargs)  # build
        instance.set_weights(reference.get_weights())
        output = _call(instance, input_data, call_kwargs)
        assert _dtype(output) == policy.compute_dtype, f"{name}: output dtype {_dtype(output)}"
        symbolic = _call(
            instance, keras.KerasTensor(input_data.shape, input_data.dtype), call_kwargs
        )
        assert _dtype(symbolic) == policy.compute_dtype, (
            f"{name}: symbolic output dtype {_dtype(symbolic)}"
        )
        for weight in instance.weights:
            if keras.backend.is_float_dtype(weight.dtype):
                assert _dtype(weight) == policy.variable_dtype, (
                    f"{name}: {weight.path} is {_dtype(weight)}"
                )
        if isinstance(instance, keras.Model):
            for sublayer in instance._flatten_layers(include_self=False):
                if not isinstance(sublayer, keras.layers.InputLayer):
                    assert sublayer.dtype_policy.name == name, (
                        f"{sublayer.name} runs {sublayer.dtype_policy.name}"
                    )
        output = _numpy(output)
        finite = np.isfinite(output)
        assert finite.all(), f"{name}: {np.sum(~finite)} non-finite outputs: {output[~finite]}"
        tolerance = PRECISION_TOLERANCES[name]
        np.testing.assert_allclose(
            output,
            expected,
            rtol=tolerance,
            atol=tolerance * max(1.0, float(np.abs(expected).max())),
            err_msg=f"{name} differs from float32",
        )


def run_layer_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_output_data=None,
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
    call_kwargs=None,
    run_training_check=True,
    run_precision_checks=True,
):
    """The standard checks of a layer: serialisation, build, symbolic and eager calls, training,
    precision."""
    expected_output_shape = tuple(expected_output_shape)

    def check_weights(layer):
        assert layer.built
        assert len(layer.trainable_weights) == expected_num_trainable_weights, (
            layer.trainable_weights
        )
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, (
            layer.non_trainable_weights
        )

    def check_output(layer, output):
        assert tuple(output.shape) == expected_output_shape, f"output shape {tuple(output.shape)}"
        assert _dtype(output) == layer.compute_dtype, f"output dtype {_dtype(output)}"

    run_serialization_test(cls(**init_kwargs))

    layer = cls(**init_kwargs)
    layer.build(input_data.shape)
    check_weights(layer)

    layer = cls(**init_kwargs)
    symbolic = _call(layer, keras.KerasTensor(input_data.shape, input_data.dtype), call_kwargs)
    assert isinstance(symbolic, keras.KerasTensor)
    check_weights(layer)
    check_output(layer, symbolic)

    layer = cls(**init_kwargs)
    output = _call(layer, input_data, call_kwargs)
    check_weights(layer)
    check_output(layer, output)
    if expected_output_data is not None:
        np.testing.assert_allclose(_numpy(output), expected_output_data, rtol=1e-5, atol=1e-6)

    # A built layer comes back built and, given the same weights, computes the same output.
    revived = run_serialization_test(layer)
    revived.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        _numpy(_call(revived, input_data, call_kwargs)), _numpy(output), rtol=1e-6
    )

    if run_training_check:
        _train_layer(layer, input_data, expected_output_shape, call_kwargs)
    if run_precision_checks:
        run_precision_test(cls, init_kwargs, input_data, call_kwargs)


def run_backbone_test(
    cls, init_kwargs, input_data, expected_output_shape, run_precision_checks=True
):
    """The standard checks of a functional backbone: serialisation, call, precision, one training
    step."""
    backbone = cls(**init_kwargs)
    run_serialization_test(backbone)
    output = backbone(input_data)
    assert tuple(output.shape) == tuple(expected_output_shape), (
        f"output shape {tuple(output.shape)}"
    )
    assert _dtype(output) == backbone.compute_dtype, f"output dtype {_dtype(output)}"
    if run_precision_checks:
        run_precision_test(cls, init_kwargs, input_data)
    _run_training_step(backbone, input_data, expected_output_shape)


def run_model_saving_test(cls, init_kwargs, input_data, tmp_path):
    """Save to a `.keras` file and load it back in safe mode: same class, same outputs."""
    model = cls(**init_kwargs)
    output = _numpy(model(input_data))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert type(restored) is cls
    np.testing.assert_allclose(_numpy(restored(input_data)), output, rtol=1e-6, atol=1e-6)


def gradients(fn, variables):
    """Gradients (NumPy) of the scalar `fn()` in each of `variables` (Keras variables; wrap an input
    array in `keras.Variable`), on the current backend: a tape on TensorFlow, `jax.grad` of `fn`
    made a pure function of the variables' values (Keras' `StatelessScope`) on JAX, autograd on
    torch."""
    if keras.config.backend() == "torch":
        import torch

        with torch.enable_grad():
            grads = torch.autograd.grad(fn(), [v.value for v in variables])
        return [keras.ops.convert_to_numpy(g) for g in grads]
    if keras.config.backend() == "jax":
        import jax

        def pure(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn()

        return [np.asarray(g) for g in jax.grad(pure)([v.value for v in variables])]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch([v.value for v in variables])
        loss = fn()
    return [
        keras.ops.convert_to_numpy(g) for g in tape.gradient(loss, [v.value for v in variables])
    ]
