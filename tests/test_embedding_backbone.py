"""`EmbeddingBackbone` (the mlp and identity heads on embeddings (N, D)) on its own, against a NumPy
float64 reference, and GPQ on vectors: training, safe-mode save/load, refusing the other kind of
input. (The CLI on embeddings is tests/test_cli_backbones.py; the data path's NaN, 1-D and mixed
widths in an npz are tests/test_data_embeddings.py.)"""

import keras
import numpy as np
import pytest
from data_fakes import signal_embeddings
from test_case import run_backbone_test, run_serialization_test

from gpq_keras import GPQ, GPQConfig
from gpq_keras.backbones import FEATURE_LAYER, BackboneError, EmbeddingBackbone, build_backbone
from gpq_keras.data import load_data, train_input
from gpq_keras.data.split import Split
from gpq_keras.retrieval import PQIndex

pytestmark = pytest.mark.backends  # every test runs on TensorFlow and JAX

D = 16  # the embeddings' width
CONFIG = GPQConfig(num_subspaces=2, num_codewords=4, subspace_dim=4, num_classes=3, input_dim=D)
M_D = CONFIG.feature_dim  # 8
X = np.random.default_rng(0).normal(size=(6, D)).astype(np.float32)


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _randomize(backbone, seed=1):
    """Random non-default values in every weight (positive variances, non-zero biases) so that no
    term of the reference vanishes."""
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        value = rng.normal(size=weight.shape)
        if weight.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, size=weight.shape)
        weight.assign(value.astype(np.float32))


def _reference(backbone, x, training=False):
    """The mlp in NumPy float64 from its weights -> (N, feature_dim): per hidden layer x @ W, batch
    norm ((h - mean) / sqrt(var + eps) * gamma + beta; moving statistics in inference, the batch's
    biased ones in training), ReLU; then x @ W + b."""
    h = np.asarray(x, np.float64)
    for i in range(len(backbone.hidden_units)):
        h = h @ _numpy(backbone.get_layer(f"hidden{i}").kernel)
        bn = backbone.get_layer(f"hidden{i}_bn")
        if training:
            mean, var = h.mean(axis=0), h.var(axis=0)
        else:
            mean, var = _numpy(bn.moving_mean), _numpy(bn.moving_variance)
        h = (h - mean) / np.sqrt(var + bn.epsilon) * _numpy(bn.gamma) + _numpy(bn.beta)
        h = np.maximum(h, 0.0)
    head = backbone.get_layer(FEATURE_LAYER)
    return h @ _numpy(head.kernel) + _numpy(head.bias)


# --- EmbeddingBackbone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_dim, feature_dim, hidden_units",
    [(16, 8, (12,)), (24, 12, (8, 6)), (32, 8, ()), (20, 20, (512,))],
)
def test_mlp_shape_layers_and_numpy_reference(input_dim, feature_dim, hidden_units):
    backbone = EmbeddingBackbone(input_dim, feature_dim, hidden_units)
    assert backbone.pixel_contract == "vectors" and backbone.name == "backbone"
    assert backbone.hidden_units == hidden_units
    assert tuple(backbone.input_shape) == (None, input_dim)
    assert tuple(backbone.output_shape) == (None, feature_dim)
    expected = [("embeddings", keras.layers.InputLayer)]
    for i in range(len(hidden_units)):
        expected += [
            (f"hidden{i}", keras.layers.Dense),
            (f"hidden{i}_bn", keras.layers.BatchNormalization),
            (f"hidden{i}_relu", keras.layers.ReLU),
        ]
    expected.append((FEATURE_LAYER, keras.layers.Dense))
    assert [layer.name for layer in backbone.layers] == [name for name, _ in expected]
    for layer, (_, cls) in zip(backbone.layers, expected):
        assert type(layer) is cls, (layer.name, type(layer).__name__)
    widths = (*hidden_units, feature_dim)
    dense = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == list(widths)
    assert [layer.use_bias for layer in dense] == [False] * len(hidden_units) + [True]
    assert all(layer.activation is keras.activations.linear for layer in dense)
    # a kernel per dense layer, a bias for the head, gamma/beta per batch norm; moving statistics
    assert len(backbone.trainable_weights) == 1 + 3 * len(hidden_units) + 1
    assert len(backbone.non_trainable_weights) == 2 * len(hidden_units)

    _randomize(backbone)
    x = np.random.default_rng(2).normal(size=(5, input_dim)).astype(np.float32)
    out = backbone(x)
    assert tuple(out.shape) == (5, feature_dim)
    np.testing.assert_allclose(_numpy(out), _reference(backbone, x), rtol=1e-5, atol=1e-5)
    if hidden_units:  # training mode: batch statistics (the moving ones are not read)
        training = _numpy(backbone(x, training=True))
        np.testing.assert_allclose(
            training, _reference(backbone, x, training=True), rtol=1e-4, atol=1e-4
        )


def test_mlp_standard_backbone_checks():
    """Serialisation round trip, call, mixed precision and one training step moving every weight."""
    for hidden in ((12,), ()):
        run_backbone_test(
            EmbeddingBackbone,
            {"input_dim": D, "feature_dim": M_D, "hidden_units": hidden},
            X,
            expected_output_shape=(len(X), M_D),
        )


def test_identity_is_the_input_exactly_without_weights():
    backbone = EmbeddingBackbone(M_D, M_D, hidden_units=None)
    assert backbone.weights == [] and backbone.hidden_units is None
    assert [layer.name for layer in backbone.layers] == ["embeddings", "identity"]
    x = np.random.default_rng(3).normal(size=(4, M_D)).astype(np.float32) * 1e3
    out = keras.ops.convert_to_numpy(backbone(x))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone(x, training=True)), x)
    revived = run_serialization_test(backbone)
    assert revived.hidden_units is None and revived.get_config()["hidden_units"] is None


def test_identity_of_another_width_names_both_widths():
    with pytest.raises(BackboneError) as error:
        EmbeddingBackbone(D, M_D, hidden_units=None)
    message = str(error.value)
    assert "\n" not in message and "input_dim == feature_dim" in message
    assert f"width {D}" in message and f"features of {M_D}" in message
    with pytest.raises(BackboneError) as error:
        build_backbone("identity", CONFIG)  # D = 16, M * d = 8
    assert str(error.value) == message
    with pytest.raises(BackboneError, match=f"width {D} for features of {M_D}"):
        GPQ(CONFIG, backbone="identity")


def test_build_backbone_mlp_and_identity_for_a_config():
    mlp = build_backbone("mlp", CONFIG, mlp_width=12)
    assert isinstance(mlp, EmbeddingBackbone) and mlp.name == "backbone"
    assert (mlp.input_dim, mlp.feature_dim, mlp.hidden_units) == (D, M_D, (12,))
    assert build_backbone("mlp", CONFIG).hidden_units == (512,)  # the default width
    square = GPQConfig(num_subspaces=2, num_codewords=4, subspace_dim=4, input_dim=M_D)
    identity = build_backbone("identity", square)
    assert isinstance(identity, EmbeddingBackbone) and identity.hidden_units is None
    policy = build_backbone("mlp", CONFIG, mlp_width=4, dtype="mixed_bfloat16")
    assert policy.dtype_policy.name == "mixed_bfloat16"
    assert keras.backend.standardize_dtype(policy(X).dtype) == "bfloat16"
    with pytest.raises(
        BackboneError, match="^identity takes embeddings: give GPQConfig.input_dim$"
    ):
        build_backbone("identity", GPQConfig(num_subspaces=2, subspace_dim=4))


def test_gpq_on_vectors_defaults_to_the_mlp_and_calls_it_on_raw_embeddings():
    model = GPQ(CONFIG)
    assert model.takes_vectors and isinstance(model.backbone, EmbeddingBackbone)
    assert model.backbone.hidden_units == (512,) and model.pixel_contract == "vectors"
    assert model.preprocessor is None  # embeddings are not normalised as pixels
    _randomize(model.backbone)
    features = model.encode(X)
    assert features.dtype == np.float32 and features.shape == (len(X), M_D)
    np.testing.assert_allclose(features, _reference(model.backbone, X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(model(X)), features, rtol=1e-5, atol=1e-5)
    square = GPQConfig(num_subspaces=2, num_codewords=4, subspace_dim=4, input_dim=M_D)
    x = X[:, :M_D] * 100
    np.testing.assert_array_equal(GPQ(square, backbone="identity").encode(x), x)


def test_a_backbone_that_does_not_fit_the_config_is_refused():
    with pytest.raises(ValueError, match=r"takes inputs \(20,\), but the config's are \(16,\)"):
        GPQ(CONFIG, backbone=EmbeddingBackbone(20, M_D, (4,)))
    with pytest.raises(ValueError, match=r"output \(12\) must equal .* = 8"):
        GPQ(CONFIG, backbone=EmbeddingBackbone(D, 12, (4,)))


# --- GPQ on vectors: training and saving ----------------------------------------------------------


def _split():
    x_l, y_l, x_u, y_u, x_q, y_q = signal_embeddings(
        seed=0, classes=3, dim=D, signal=4, labeled=8, unlabeled=24, queries=2
    )
    return Split(x_q, y_q, x_u, y_u, x_labeled=x_l, y_labeled=y_l, name="vectors")


@pytest.fixture(scope="module")
def trained():
    """(a GPQ on the mlp after three `fit` steps on vectors, its weights before, the history)."""
    keras.utils.set_random_seed(0)
    model = GPQ(CONFIG, backbone="mlp")
    model.compile()
    before = {w.path: _numpy(w) for w in model.weights}
    dataset, _ = train_input(_split(), batch_size=8, seed=0)
    history = model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    return model, before, history.history


def test_fit_on_vectors_has_finite_losses_and_moves_the_weights(trained):
    model, before, history = trained
    assert set(history) >= {"loss", "npq_loss", "cls_loss", "entropy_loss"}, history
    assert all(np.isfinite(history[name]).all() for name in history), history
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    for weight in model.trainable_weights:
        assert not np.array_equal(_numpy(weight), before[weight.path]), f"{weight.path} is still"
    bn = model.backbone.get_layer("hidden0_bn")
    for stat in (bn.moving_mean, bn.moving_variance):  # training-mode batch norm updated them
        assert not np.array_equal(_numpy(stat), before[stat.path]), stat.path


def test_vector_model_saves_and_loads_in_safe_mode(trained, tmp_path):
    model, _, _ = trained
    features = model.encode(X)
    codes = PQIndex.from_model(model).add(features).codes
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert type(restored) is GPQ and restored.takes_vectors
    assert isinstance(restored.backbone, EmbeddingBackbone)
    assert restored.backbone.hidden_units == (512,) and restored.gpq_config == CONFIG
    for ours, theirs in zip(restored.weights, model.weights):
        assert ours.path == theirs.path
        np.testing.assert_array_equal(_numpy(ours), _numpy(theirs), err_msg=ours.path)
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == 3
    again = restored.encode(X)
    np.testing.assert_allclose(again, features, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(PQIndex.from_model(restored).add(again).codes, codes)
    assert restored.fingerprint == model.fingerprint


def test_identity_model_saves_and_loads_in_safe_mode(tmp_path):
    square = GPQConfig(num_subspaces=2, num_codewords=4, subspace_dim=4, num_classes=3, input_dim=8)
    model = GPQ(square, backbone="identity")
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.backbone.hidden_units is None and restored.backbone.weights == []
    x = X[:, :8]
    np.testing.assert_array_equal(restored.encode(x), x)
    np.testing.assert_array_equal(restored.codebook, model.codebook)


def test_frozen_mlp_moves_only_its_head():
    keras.utils.set_random_seed(0)
    model = GPQ(CONFIG, backbone=EmbeddingBackbone(D, M_D, (8,)), freeze_backbone=True)
    assert [layer.name for layer in model.backbone_layers()] == ["hidden0", "hidden0_bn"]
    model.compile()
    before = {w.path: _numpy(w) for w in model.backbone.weights}
    split = _split()
    batch = {"labeled": split.x_labeled[:8], "unlabeled": split.x_unlabeled[:8]}
    logs = model.train_on_batch(batch, split.y_labeled[:8], return_dict=True)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    now = {w.path: _numpy(w) for w in model.backbone.weights}
    moved = [path for path, old in before.items() if not np.array_equal(now[path], old)]
    assert sorted(moved) == [f"{FEATURE_LAYER}/bias", f"{FEATURE_LAYER}/kernel"]


# --- the wrong kind of input ----------------------------------------------------------------------


def test_a_vector_model_refuses_images_and_other_widths():
    model = GPQ(CONFIG, backbone=EmbeddingBackbone(D, M_D, (4,)))
    cases = {
        (2, 32, 32, 3): "the model takes embeddings (N, 16); got images (2, 32, 32, 3)",
        (3, 20): "the model takes embeddings (N, 16); got embeddings (3, 20)",
    }
    for shape, message in cases.items():
        x = np.zeros(shape, np.float32)
        for refuse in (model.check_inputs, model.encode):
            with pytest.raises(ValueError) as error:
                refuse(x)
            assert str(error.value) == message
    model.compile()
    images = np.zeros((2, 32, 32, 3), np.float32)
    before = [_numpy(w) for w in model.weights]
    with pytest.raises(ValueError, match=r"expected shape=\(None, 16\), found shape=\(.*32, 32, 3"):
        model.train_on_batch({"labeled": images, "unlabeled": images}, np.array([0, 1]))
    for weight, old in zip(model.weights, before):  # refused before any update
        np.testing.assert_array_equal(_numpy(weight), old, err_msg=weight.path)


def test_an_image_model_refuses_vectors():
    config = GPQConfig(
        num_subspaces=2,
        num_codewords=4,
        subspace_dim=4,
        num_classes=3,
        image_shape=(32, 32, 3),
        filters=(4, 4, 8, 8),
    )
    model = GPQ(config)
    assert not model.takes_vectors and model.pixel_contract == "gpq"
    x = np.zeros((5, D), np.float32)
    for refuse in (model.check_inputs, model.encode):
        with pytest.raises(ValueError) as error:
            refuse(x)
        assert str(error.value) == "the model takes images (N, 32, 32, 3); got embeddings (5, 16)"
    with pytest.raises(BackboneError, match="^mlp takes embeddings: give GPQConfig.input_dim$"):
        GPQ(config, backbone="mlp")
    with pytest.raises(BackboneError, match=r"^vgg takes images, not embeddings: .* \(got 16\)$"):
        GPQ(CONFIG, backbone="vgg")


def test_npz_embeddings_of_another_width_than_the_model_are_one_line(tmp_path):
    """The data path's check (`gpq evaluate`/`encode`: `model.check_inputs(split.x_db)`); NaN, 1-D
    and mixed widths inside one npz are tests/test_data_embeddings.py's."""
    x, _, _, _, _, _ = signal_embeddings(seed=1, classes=3, dim=20, labeled=10, unlabeled=3)
    y = np.repeat(np.arange(3), 10)
    path = tmp_path / "wide.npz"
    np.savez(path, x_query=x[:6], y_query=y[:6], x_db=x[6:], y_db=y[6:])
    split = load_data(f"npz:{path}")
    assert split.takes_vectors and split.input_shape == (20,)
    model = GPQ(CONFIG, backbone=EmbeddingBackbone(D, M_D, (4,)))
    with pytest.raises(ValueError) as error:
        model.check_inputs(split.x_db)
    message = str(error.value)
    assert "\n" not in message
    assert message == "the model takes embeddings (N, 16); got embeddings (24, 20)"
