"""ScaledAdam and GPQ's backbone learning-rate multiplier: the backbone steps at R times the head's
rate (checked against Adam's own step, which R scales exactly), on TensorFlow and JAX."""

import keras
import numpy as np
import pytest

from gpq_keras.backbones import FEATURE_LAYER
from gpq_keras.model import GPQ, load_gpq, save_atomic
from gpq_keras.optimizers import ScaledAdam, default_optimizer

pytestmark = pytest.mark.backends


def _batch(config, n=6, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, *config.image_shape)
    images = [rng.integers(0, 256, shape).astype(np.float32) for _ in range(2)]
    return {"labeled": images[0], "unlabeled": images[1]}, np.arange(n) % config.num_classes


def _deltas(config, multiplier, **kwargs):
    """{variable path: change after one training step} of a fresh seeded model."""
    keras.utils.set_random_seed(0)
    model = GPQ(config, backbone_learning_rate_multiplier=multiplier, **kwargs)
    model.compile()
    before = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    model.train_on_batch(*_batch(config))
    return model, {v.path: v.numpy() - before[v.path] for v in model.trainable_variables}


def test_the_backbone_steps_at_r_times_the_rate_and_the_head_at_the_rate(tiny_config):
    model, full = _deltas(tiny_config, 1.0)
    scaled_model, scaled = _deltas(tiny_config, 0.1)
    assert isinstance(scaled_model.optimizer, ScaledAdam)
    assert not isinstance(model.optimizer, ScaledAdam)  # R = 1: the original's Adam itself
    slowed = set(scaled_model.learning_rate_multipliers())
    head = {v.path for v in scaled_model.backbone.get_layer(FEATURE_LAYER).trainable_variables}
    assert slowed and not slowed & head
    assert "quantizer/codewords" not in slowed and "classifier/prototypes" not in slowed
    for path, delta in full.items():
        want = 0.1 * delta if path in slowed else delta
        # the step is ~2e-5 (lr 2e-4 x 0.1): float32 weights near 1 hold it to their ulp, 1.2e-7
        np.testing.assert_allclose(scaled[path], want, rtol=1e-4, atol=2.5e-7, err_msg=path)
        assert np.abs(delta).max() > 0, path  # every variable moved: the check means something


def test_a_multiplier_of_zero_keeps_the_backbone_weights(tiny_config):
    model, deltas = _deltas(tiny_config, 0.0)
    for path in model.learning_rate_multipliers():
        assert np.all(deltas[path] == 0), path
    assert np.abs(deltas[f"{FEATURE_LAYER}/kernel"]).max() > 0


def test_the_multiplier_and_the_optimizer_state_survive_save_and_load(tiny_config, tmp_path):
    model, _ = _deltas(tiny_config, 0.25)
    path = str(tmp_path / "m.keras")
    save_atomic(model, path)
    loaded = load_gpq(path)
    assert loaded.backbone_learning_rate_multiplier == 0.25
    assert isinstance(loaded.optimizer, ScaledAdam)
    assert loaded.optimizer.learning_rate_multipliers == model.optimizer.learning_rate_multipliers
    batch = _batch(tiny_config, seed=1)
    model.train_on_batch(*batch)
    loaded.train_on_batch(*batch)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)


def test_another_optimizer_with_a_multiplier_is_refused(tiny_config):
    model = GPQ(tiny_config, backbone_learning_rate_multiplier=0.5)
    with pytest.raises(ValueError, match="needs gpq_keras.optimizers.ScaledAdam"):
        model.compile(optimizer=keras.optimizers.SGD())
    model.compile(optimizer=default_optimizer(tiny_config, model.learning_rate_multipliers()))
    with pytest.raises(ValueError, match="finite number >= 0"):
        GPQ(tiny_config, backbone_learning_rate_multiplier=-1)
    with pytest.raises(ValueError, match="finite number >= 0"):
        ScaledAdam(learning_rate_multipliers={"conv0/kernel": float("nan")})


def test_freeze_backbone_trains_only_the_head_z_and_c(tiny_config):
    keras.utils.set_random_seed(0)
    model = GPQ(tiny_config, freeze_backbone=True)
    model.compile()
    frozen = [w for layer in model.backbone_layers() for w in layer.weights]
    assert frozen and not any(w.trainable for w in frozen)
    before = [np.array(w.numpy()) for w in frozen]  # moving statistics too: inference-mode BN
    head = [np.array(v.numpy()) for v in model.trainable_variables]
    model.train_on_batch(*_batch(tiny_config))
    for w, old in zip(frozen, before):
        np.testing.assert_array_equal(w.numpy(), old, err_msg=w.path)
    assert [v.path for v in model.trainable_variables] == [
        f"{FEATURE_LAYER}/kernel",
        f"{FEATURE_LAYER}/bias",
        "quantizer/codewords",
        "classifier/prototypes",
    ]
    for v, old in zip(model.trainable_variables, head):
        assert np.abs(v.numpy() - old).max() > 0, v.path
