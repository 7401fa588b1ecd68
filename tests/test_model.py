import keras
import numpy as np
import pytest
from test_case import gradients

from gpq_keras import GPQ, GPQConfig, VGGBackbone
from gpq_keras.data import digits, protocol_split, train_input
from gpq_keras.image_converter import CHANNEL_MEAN, CHANNEL_STD, normalize_array
from gpq_keras.losses import subspace_entropy_loss
from gpq_keras.model import default_optimizer, load_gpq
from gpq_keras.retrieval import PQIndex

backends = pytest.mark.backends  # also on JAX

RNG = np.random.default_rng(2)


def _images(n, shape=(16, 16, 3)):
    return RNG.normal(size=(n, *shape)).astype(np.float32)


@backends
def test_predict_encode_and_codebooks(tiny_config):
    model = GPQ(tiny_config)
    x = _images(5)
    features = model.encode(x)
    assert features.shape == (5, 12) and features.dtype == np.float32
    np.testing.assert_allclose(features, model.predict(x, verbose=0), rtol=1e-6)
    assert model.codebook.shape == (4, 12) and model.prototypes.shape == (5, 12)
    refined = model.refined_codebook
    assert refined.shape == (4, 12)
    np.testing.assert_allclose(np.linalg.norm(refined.reshape(4, 3, 4), axis=-1), 1.0, rtol=1e-5)


@backends
def test_entropy_gradient_is_reversed_for_the_backbone_only(tiny_config):
    model = GPQ(tiny_config)
    x = _images(8)
    dense = model.backbone.get_layer("feature_vector").kernel
    prototypes = model.classifier.prototypes

    def entropy(reverse):
        features = model(x, training=False)
        if reverse:
            features = model.reversal(features)
        return subspace_entropy_loss(model.classifier(model.intra_norm(features)))

    grads = {
        reverse: gradients(lambda reverse=reverse: entropy(reverse), [dense, prototypes])
        for reverse in (True, False)
    }
    np.testing.assert_allclose(grads[True][0], -grads[False][0], rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(grads[True][1], grads[False][1], rtol=1e-6, atol=1e-10)
    assert np.abs(grads[True][0]).max() > 0 and np.abs(grads[True][1]).max() > 0

    # Numerically: a small step against the reported gradient lowers the entropy loss for the
    # prototypes C (they maximise entropy) and raises it for the backbone (it minimises entropy).
    base = float(entropy(True))
    eps = 1e-2
    for variable, grad, direction in (
        (prototypes, grads[True][1], -1),
        (dense, grads[True][0], +1),
    ):
        original = keras.ops.convert_to_numpy(variable)
        variable.assign(original - eps * grad / np.abs(grad).max())
        moved = float(entropy(True))
        variable.assign(original)
        assert np.sign(moved - base) == direction, (variable.name, base, moved)


@pytest.mark.large
@backends
def test_each_stream_updates_batch_norm_with_its_own_statistics(tiny_config):
    model = GPQ(tiny_config)
    model.compile(optimizer=keras.optimizers.Adam(0.0))
    x_l, x_u = _images(6), _images(6) + 2.0
    backbone_conv0 = keras.Model(model.backbone.input, model.backbone.get_layer("conv0").output)

    def conv0(pixels):  # the model normalises its inputs before the backbone
        return backbone_conv0(model.preprocessor(pixels))

    mean_l = keras.ops.convert_to_numpy(conv0(x_l)).mean(axis=(0, 1, 2))
    mean_u = keras.ops.convert_to_numpy(conv0(x_u)).mean(axis=(0, 1, 2))
    model.train_on_batch({"labeled": x_l, "unlabeled": x_u}, np.arange(6) % 5)
    moving = keras.ops.convert_to_numpy(model.backbone.get_layer("batch0").moving_mean)
    expected = 0.9 * (0.1 * mean_l) + 0.1 * mean_u  # labeled call first, then unlabeled
    np.testing.assert_allclose(moving, expected, rtol=1e-4, atol=1e-6)
    concatenated = 0.1 * np.concatenate(
        [keras.ops.convert_to_numpy(conv0(x)) for x in (x_l, x_u)]
    ).mean(axis=(0, 1, 2))
    assert not np.allclose(moving, concatenated, rtol=1e-3)


def _digits_split(n_per_class=30):
    images, labels = digits.load_images()
    keep = np.concatenate([np.flatnonzero(labels == c)[:n_per_class] for c in range(10)])
    return protocol_split(images[keep], labels[keep], query_every=10, labeled_per_class=15)


class _StepLosses(keras.callbacks.Callback):
    """Per-step values recovered from fit's running means."""

    def on_train_begin(self, logs=None):
        self.means, self.steps = {}, {}

    def on_train_batch_end(self, batch, logs=None):
        for key, mean in logs.items():
            previous = self.means.get(key, 0.0) if batch else 0.0
            self.steps.setdefault(key, []).append((batch + 1) * mean - batch * previous)
            self.means[key] = mean


@pytest.mark.large
def test_fit_one_epoch_on_digits_losses_finite_and_decreasing():
    split = _digits_split()  # 300 images: 30 queries, 150 labeled, 120 unlabeled
    config = GPQConfig(
        num_subspaces=4,
        num_codewords=8,
        subspace_dim=6,
        filters=(8, 16, 16, 16),
        learning_rate=3e-3,
    )
    model = GPQ(config)
    model.compile()
    dataset, steps = train_input(split, batch_size=30, seed=0, augmented=False)
    assert steps == 5
    record = _StepLosses()
    history = model.fit(dataset, steps_per_epoch=steps * 4, epochs=1, verbose=0, callbacks=[record])
    assert set(history.history) == {"loss", "npq_loss", "cls_loss", "entropy_loss"}
    for key, values in record.steps.items():
        assert np.all(np.isfinite(values)), key
    total = np.array(record.steps["loss"])
    assert total[-5:].mean() < total[:3].mean() - 0.1, total
    lr = model.optimizer.learning_rate
    assert float(lr) == pytest.approx(3e-3)  # 20 steps < decay_steps


@pytest.mark.large
@backends
def test_fit_accepts_multi_hot_labels_and_evaluate_reports_the_same_metrics(tiny_config):
    model = GPQ(tiny_config)
    model.compile()
    x = _images(8)
    y = (RNG.random((8, 5)) < 0.4).astype(np.float32)
    logs = model.train_on_batch({"labeled": x, "unlabeled": _images(8)}, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    results = model.evaluate(x, np.arange(8) % 5, verbose=0, return_dict=True)
    assert set(results) == {"loss", "npq_loss", "cls_loss", "entropy_loss"}
    assert results["entropy_loss"] < 0
    with pytest.raises(ValueError, match="unlabeled"):
        model.train_on_batch(x, np.arange(8) % 5)


@pytest.mark.large
@backends
@pytest.mark.parametrize("pipeline", ["tf.data", "numpy"])
def test_fit_takes_either_input_pipeline(tiny_config, pipeline):
    """`fit` on the tf.data pipeline (any backend, when TensorFlow is installed) and on the NumPy
    PyDataset, with the steps of each epoch continuing the stream (the optimizer counts every
    step)."""
    images = RNG.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    split = protocol_split(images, np.arange(40) % 5, query_every=10, labeled_per_class=4)
    model = GPQ(tiny_config)
    model.compile()
    dataset, steps = train_input(split, pipeline=pipeline, batch_size=8, seed=0)
    history = model.fit(dataset, steps_per_epoch=2, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations) == 4


@backends
def test_default_optimizer_is_the_original_schedule():
    opt = default_optimizer(GPQConfig())
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    values = [float(schedule(step)) for step in (0, 99, 100, 250)]
    np.testing.assert_allclose(values, [2e-4, 2e-4, 2e-4 * 0.95, 2e-4 * 0.95**2], rtol=1e-6)
    assert opt.beta_1 == 0.5 and opt.epsilon == 1e-8


@pytest.mark.large
@backends
def test_save_and_load_round_trip(tmp_path, tiny_config):
    model = GPQ(tiny_config.replace(retrieval_mode="consistent"))
    model.compile()
    x = _images(6)
    model.train_on_batch({"labeled": x, "unlabeled": _images(6)}, np.arange(6) % 5)
    path = tmp_path / "gpq.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, GPQ)
    assert loaded.gpq_config == model.gpq_config
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.codebook, model.codebook)
    np.testing.assert_array_equal(loaded.prototypes, model.prototypes)
    assert int(loaded.optimizer.iterations) == 1
    config = GPQ.from_config(model.get_config()).get_config()
    assert config == model.get_config()
    loaded.train_on_batch({"labeled": x, "unlabeled": _images(6)}, np.arange(6) % 5)
    assert int(loaded.optimizer.iterations) == 2


def test_backbone_with_wrong_output_size_is_refused(tiny_config):
    with pytest.raises(ValueError, match="num_subspaces \\* subspace_dim = 12"):
        GPQ(tiny_config, backbone=VGGBackbone(10, filters=(4, 4, 4, 4), image_shape=(16, 16, 3)))


@pytest.mark.large
@pytest.mark.parametrize(
    "policy", [pytest.param("mixed_float16", marks=backends), "mixed_bfloat16"]
)
def test_one_mixed_precision_step_is_close_to_float32_and_the_policy_is_saved(
    tmp_path, tiny_config, policy
):
    batch = ({"labeled": _images(8), "unlabeled": _images(8)}, np.arange(8) % 5)
    reference = GPQ(tiny_config)
    model = GPQ(tiny_config, dtype=policy)
    model.set_weights(reference.get_weights())
    compute = keras.dtype_policies.get(policy).compute_dtype
    assert model.backbone.get_layer("conv0").compute_dtype == compute
    assert (
        model.quantizer.codewords.dtype == "float32" and model.quantizer.compute_dtype == "float32"
    )
    assert (
        model.intra_norm.compute_dtype == "float32" and model.classifier.compute_dtype == "float32"
    )
    for m in (reference, model):
        m.compile()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    want = reference.train_on_batch(*batch, return_dict=True)
    got = model.train_on_batch(*batch, return_dict=True)
    for name in ("loss", "npq_loss", "cls_loss", "entropy_loss"):
        assert np.isfinite(got[name]), name
        assert got[name] == pytest.approx(want[name], rel=0.05, abs=0.02), name
    np.testing.assert_allclose(
        model.codebook, reference.codebook, atol=1e-3
    )  # one step moved both alike
    path = tmp_path / "mixed.keras"
    model.save(path)
    loaded = load_gpq(path)
    assert loaded.dtype_policy.name == policy
    assert loaded.backbone.get_layer("conv0").compute_dtype == compute
    assert loaded.quantizer.compute_dtype == "float32"
    np.testing.assert_array_equal(
        loaded.predict(batch[0]["labeled"], verbose=0),
        model.predict(batch[0]["labeled"], verbose=0),
    )


@backends
def test_a_model_saved_by_gpq_keras_0_1_0_loads_and_gives_its_outputs():
    """tests/data/gpq_0.1.0_tiny.keras was written before the vocabulary and weight names changed
    (config keys n_book, n_word, len_code, n_classes; weights Z and C; conv biases; Keras' batch
    norm; no dtype in the config); it loads in safe mode with equal outputs."""
    import os

    folder = os.path.join(os.path.dirname(__file__), "data")
    model = load_gpq(os.path.join(folder, "gpq_0.1.0_tiny.keras"))
    expected = np.load(os.path.join(folder, "gpq_0.1.0_tiny_expected.npz"))
    assert (
        model.gpq_config.num_subspaces,
        model.gpq_config.num_codewords,
        model.gpq_config.num_classes,
    ) == (3, 4, 5)
    assert model.gpq_config.retrieval_mode == "original"
    # features to float rounding: batch norm now runs on the fused kernel
    np.testing.assert_allclose(
        model.predict(expected["images"], verbose=0), expected["features"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(model.codebook, expected["codebook"])
    np.testing.assert_array_equal(model.prototypes, expected["prototypes"])
    np.testing.assert_allclose(
        model.refined_codebook, expected["refined_codebook"], rtol=1e-6, atol=1e-7
    )
    assert int(model.optimizer.iterations) == 1
    # It keeps its contract: normalised inputs, and `encode` normalises uint8 arrays as before.
    assert model.normalize_pixels is False and model.preprocessor is None
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        model.encode(pixels),
        model.predict(normalize_array(pixels), verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


@backends
def test_pixels_in_uint8_and_float_give_the_same_features_and_neighbours(tiny_config, tmp_path):
    """The first layer normalises pixels with the original's statistics: uint8 and float 0..255
    versions of images (what keras.utils.img_to_array gives) give the same features, equal to the
    backbone's on normalised images (NumPy float64), through encode, predict and a saved and
    reloaded model."""
    model = GPQ(tiny_config)
    pixels = np.random.default_rng(1).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    from_uint8, from_float = model.encode(pixels), model.encode(pixels.astype(np.float32))
    np.testing.assert_array_equal(from_uint8, from_float)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), from_uint8, rtol=1e-5, atol=1e-6)
    reference = (pixels.astype(np.float64) - np.array(CHANNEL_MEAN)) / np.array(CHANNEL_STD)
    np.testing.assert_allclose(
        from_uint8,
        model.backbone.predict(reference.astype(np.float32), verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    index = PQIndex.from_model(model).add(from_uint8[2:])
    np.testing.assert_array_equal(
        index.search(from_float[:2], 5)[1], index.search(from_uint8[:2], 5)[1]
    )
    model.save(tmp_path / "pixels.keras")
    loaded = load_gpq(tmp_path / "pixels.keras")
    assert loaded.normalize_pixels and loaded.get_config()["normalize_pixels"] is True
    np.testing.assert_array_equal(loaded.encode(pixels), from_uint8)


@pytest.mark.large
def test_a_label_outside_the_classes_is_an_error_not_a_silent_zero_row(tiny_config):
    import tensorflow as tf

    model = GPQ(tiny_config)
    model.compile()
    x = {"labeled": _images(4), "unlabeled": _images(4)}
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside the class ids \[0, 5\)"):
        model.train_on_batch(x, np.array([0, 1, 5, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the class ids"):
        model.train_on_batch(x, np.array([0, -1, 3, 2]))
    for a, b in zip(model.get_weights(), before):  # batch-norm statistics included: no weight moved
        np.testing.assert_array_equal(a, b)
