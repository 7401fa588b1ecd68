import keras
import numpy as np
import pytest
from test_case import run_backbone_test, run_model_saving_test, run_precision_test

from gpq_keras import VGGBackbone
from gpq_keras.backbones import BatchNormalization

pytestmark = pytest.mark.backends

INIT_KWARGS = {
    "feature_dim": 12,
    "filters": (4, 8, 8, 8),
    "image_shape": (16, 16, 3),
}
INPUT_DATA = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)


def test_backbone_basics():
    run_backbone_test(
        cls=VGGBackbone,
        init_kwargs=INIT_KWARGS,
        input_data=INPUT_DATA,
        expected_output_shape=(2, 12),
        run_precision_checks=False,  # see test_backbone_mixed_precision
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_backbone_mixed_precision(policy):
    run_precision_test(VGGBackbone, INIT_KWARGS, INPUT_DATA, policies=(policy,))


def test_backbone_saving(tmp_path):
    run_model_saving_test(
        cls=VGGBackbone,
        init_kwargs=INIT_KWARGS,
        input_data=INPUT_DATA,
        tmp_path=tmp_path,
    )


def test_backbone_layer_names_head_and_batch_norm():
    backbone = VGGBackbone(**INIT_KWARGS)
    names = [layer.name for layer in backbone.layers if layer.weights]
    assert names[:3] == ["conv0", "batch0", "conv0_1"] and names[-1] == "feature_vector"
    assert backbone.get_layer("feature_vector").kernel.shape == (
        8 + 8,
        12,
    )  # [GAP(stage 3), GAP(stage 2)]
    bn = backbone.get_layer("batch0")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-3)


@pytest.mark.large
def test_full_width_backbone_is_vgg16_sized():
    full = VGGBackbone(144)
    assert full.count_params() > 7_000_000  # VGG-16's first ten conv layers
    assert full.get_layer("feature_vector").kernel.shape == (768, 144)


def test_sync_batch_norm_of_a_tf_distribute_model_builds_and_round_trips_on_every_backend():
    """`synchronized=True` (a model trained with --sync-batch-norm on TensorFlow) builds on JAX and
    torch too, where Keras' own layer refuses it; the flag stays in the config, in effect on TF."""
    layer = BatchNormalization(synchronized=True)
    assert layer.get_config()["synchronized"] is True
    assert layer.synchronized is (keras.config.backend() == "tensorflow")
    revived = BatchNormalization.from_config(layer.get_config())
    assert revived.get_config()["synchronized"] is True
    x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype("float32")
    out = keras.ops.convert_to_numpy(revived(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # one device: the batch's own
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + revived.epsilon), atol=1e-4)
    assert BatchNormalization().get_config()["synchronized"] is False
