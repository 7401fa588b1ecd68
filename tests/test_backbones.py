import numpy as np
import pytest
from test_case import run_backbone_test, run_model_saving_test, run_precision_test

from gpq_keras import VGGBackbone

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
