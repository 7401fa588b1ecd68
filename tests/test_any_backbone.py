"""Backbones other than the original VGG: keras.applications models and KerasHub presets, through
GPQ (one training step, safe-mode save/load, freezing) and on their own (weights files, errors)."""

import shutil
import sys

import h5py
import keras
import numpy as np
import pytest
from test_case import run_serialization_test

from gpq_keras import GPQ, GPQConfig
from gpq_keras.backbones import (
    APPLICATIONS,
    FEATURE_LAYER,
    HUB_MISSING,
    ApplicationBackbone,
    BackboneError,
    HubBackbone,
    build_backbone,
    build_feature_extractor,
    hub_backbone_from_preset,
)
from gpq_keras.image_converter import CAFFE_MEAN_BGR, caffe_preprocess
from gpq_keras.model import load_gpq, save_atomic

pytestmark = pytest.mark.backends

CONFIG = GPQConfig(
    num_subspaces=2, num_codewords=4, subspace_dim=4, num_classes=3, image_shape=(32, 32, 3)
)
SHAPE = (32, 32, 3)
PIXELS = np.random.default_rng(5).uniform(0, 255, size=(2, *SHAPE)).astype(np.float32)
LABELS = np.array([0, 1])
BATCH = {"labeled": PIXELS, "unlabeled": np.ascontiguousarray(PIXELS[::-1])}
POOLED_WIDTH = {
    "resnet50": 2048,
    "efficientnetv2_b0": 1280,
    "convnext_tiny": 768,
    "mobilenet_v3_small": 576,
}


# On JAX, XLA compiles an application's full training step (forward and backward, for the labeled
# and the unlabeled stream) in 30-60 s on CPU, so there the full step runs for resnet50 only; the
# frozen step (no backbone gradients: quick to compile, and a small optimizer state to save) runs
# for all four on both backends and gives the models the save/load and weights tests use.
# TensorFlow runs the steps eagerly (no tracing) but for mobilenet_v3_small's (compiled).
ON_JAX = keras.config.backend() == "jax"
TRAINED = ("resnet50",) if ON_JAX else tuple(sorted(APPLICATIONS))
COMPILED = "mobilenet_v3_small"


def _eager(name):
    """Whether GPQ on application `name` runs its steps eagerly here (see TRAINED)."""
    return not ON_JAX and name != COMPILED


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float32)


def _backbone_argument(name):
    """GPQ's `backbone=`: a name, except convnext_tiny as an object (both paths run)."""
    if name == "convnext_tiny":
        return ApplicationBackbone(name, CONFIG.feature_dim, SHAPE)
    return name


def _losses_finite(logs):
    assert set(logs) >= {"loss", "npq_loss", "cls_loss", "entropy_loss"}, logs
    assert all(np.isfinite(float(v)) for v in logs.values()), logs


@pytest.fixture(scope="module", params=sorted(APPLICATIONS))
def frozen(request):
    """(application, a GPQ(freeze_backbone=True) on it, its weights before and losses of one
    training step)."""
    name = request.param
    keras.utils.set_random_seed(0)
    model = GPQ(CONFIG, backbone=_backbone_argument(name), freeze_backbone=True)
    model.compile(run_eagerly=_eager(name))
    before = [_numpy(w) for w in model.backbone.weights]
    logs = model.train_on_batch(BATCH, LABELS, return_dict=True)
    return name, model, before, logs


def test_frozen_backbone_moves_only_the_head(frozen):
    name, model, before, logs = frozen
    _losses_finite(logs)
    weights = model.backbone.weights
    moved = [w.path for w, old in zip(weights, before) if not np.array_equal(_numpy(w), old)]
    assert sorted(moved) == [f"{FEATURE_LAYER}/bias", f"{FEATURE_LAYER}/kernel"]
    if name != "convnext_tiny":  # (layer norm, no moving statistics)
        assert any("moving" in w.path for w in model.backbone.base.non_trainable_weights)
    backbone = model.backbone
    assert isinstance(backbone, ApplicationBackbone) and backbone.application == name
    assert backbone.pixel_contract == "pixels" and model.preprocessor is None  # own preprocessing
    assert [layer.name for layer in backbone.layers] == ["images", "base", "pool", FEATURE_LAYER]
    assert backbone.feature_extractor(PIXELS).shape == (2, POOLED_WIDTH[name])


def test_application_saves_and_loads_in_safe_mode(frozen, tmp_path):
    name, model, _, _ = frozen
    features = model.encode(PIXELS)
    path = tmp_path / "model.keras"
    save_atomic(model, path)
    restored = load_gpq(path)  # safe mode: the backbone comes back from its constructor args
    restored.run_eagerly = _eager(name)
    assert isinstance(restored.backbone, ApplicationBackbone)
    assert restored.backbone.application == name and restored.freeze_backbone
    np.testing.assert_allclose(restored.encode(PIXELS), features, rtol=1e-5, atol=1e-5)


def test_application_weights_path_round_trip(frozen, tmp_path):
    """The base's `.weights.h5` loads by weights=PATH; the head stays the new one's (two
    independent initialisations)."""
    name, model, _, _ = frozen
    path = tmp_path / "base.weights.h5"
    model.backbone.base.save_weights(path)
    loaded = ApplicationBackbone(name, CONFIG.feature_dim, SHAPE, weights=path)
    for ours, theirs in zip(loaded.base.weights, model.backbone.base.weights):
        np.testing.assert_array_equal(_numpy(ours), _numpy(theirs), err_msg=ours.path)
    np.testing.assert_allclose(
        _numpy(loaded.base(PIXELS)), _numpy(model.backbone.base(PIXELS)), rtol=1e-5, atol=1e-5
    )
    head = model.backbone.get_layer(FEATURE_LAYER).kernel
    assert not np.allclose(_numpy(loaded.get_layer(FEATURE_LAYER).kernel), _numpy(head))
    assert loaded.get_config()["weights"] is None  # a saved model carries its own weights


@pytest.mark.parametrize("name", TRAINED)
def test_application_full_training_step(name):
    """One step trains the whole application: finite losses, and its weights move."""
    keras.utils.set_random_seed(0)
    model = GPQ(CONFIG, backbone=_backbone_argument(name))
    model.compile(run_eagerly=_eager(name))
    kernel = next(w for w in model.backbone.base.trainable_weights if "kernel" in w.path)
    before = _numpy(kernel)
    _losses_finite(model.train_on_batch(BATCH, LABELS, return_dict=True))
    assert not np.array_equal(_numpy(kernel), before), f"{kernel.path} did not move"


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_minimum_image_size(name):
    """32x32 is the least each application takes: Keras' constructors refuse 31 (ConvNeXt's four
    downsamplings by 4, 2, 2, 2 need it: 31 -> 7 -> 3 -> 1 -> 0); the backbone says so first."""
    spec = APPLICATIONS[name]
    constructor = getattr(keras.applications, spec.constructor)
    with pytest.raises(ValueError, match="at least 32x32"):
        constructor(include_top=False, weights=None, input_shape=(31, 32, 3))
    with pytest.raises(BackboneError) as error:
        ApplicationBackbone(name, 8, (31, 32, 3))
    assert str(error.value) == (
        f"{name} needs images of at least 32x32; got 31x32 (--image-size 32 or more)"
    )
    with pytest.raises(BackboneError, match="needs images of at least 32x32; got 16x16"):
        build_backbone(name, GPQConfig(num_classes=3, image_shape=(16, 16, 3)))


@pytest.fixture(scope="module")
def mobilenet():
    """A mobilenet_v3_small backbone, the cheapest application."""
    keras.utils.set_random_seed(1)
    return ApplicationBackbone("mobilenet_v3_small", 8, SHAPE)


def test_application_config_round_trip_and_properties(mobilenet):
    revived = run_serialization_test(mobilenet)
    assert revived.get_config()["application"] == "mobilenet_v3_small"
    assert mobilenet.min_image_size == 32
    assert mobilenet.feature_extractor is mobilenet.feature_extractor  # built once
    # MobileNetV3 rescales pixels itself (include_preprocessing=True) and the head is Dense(8)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in mobilenet.base.layers)
    pooled = _numpy(mobilenet.feature_extractor(PIXELS))
    np.testing.assert_allclose(pooled, _numpy(mobilenet.base(PIXELS)).mean(axis=(1, 2)), rtol=1e-5)
    head = mobilenet.get_layer(FEATURE_LAYER)
    np.testing.assert_allclose(
        _numpy(mobilenet(PIXELS)),
        pooled @ _numpy(head.kernel) + _numpy(head.bias),
        rtol=1e-4,
        atol=1e-5,
    )


def test_caffe_preprocessing_matches_keras_and_runs_symbolically():
    expected = keras.applications.resnet50.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(_numpy(caffe_preprocess(PIXELS)), expected, rtol=1e-6, atol=1e-4)
    by_hand = PIXELS[..., ::-1] - np.float32(CAFFE_MEAN_BGR)
    uint8 = PIXELS.astype(np.uint8)  # cast to float32 first: no uint8 wrap-around
    np.testing.assert_allclose(
        _numpy(caffe_preprocess(uint8)),
        uint8[..., ::-1].astype(np.float32) - np.float32(CAFFE_MEAN_BGR),
        rtol=1e-6,
        atol=1e-4,
    )
    symbolic = caffe_preprocess(keras.KerasTensor((None, *SHAPE)))
    assert isinstance(symbolic, keras.KerasTensor) and symbolic.shape == (None, *SHAPE)
    model = keras.Model(inputs := keras.Input(SHAPE), caffe_preprocess(inputs))
    np.testing.assert_allclose(_numpy(model(PIXELS)), by_hand, rtol=1e-6, atol=1e-4)


def _write_legacy_h5(model, path, drop=(), reshape=None):
    """`model`'s weights in keras.applications' h5 format (`layer_names`, `weight_names`), leaving
    out the layers in `drop` and giving the first weight of layer `reshape` half its last axis."""
    with h5py.File(path, "w") as file:
        names = [layer.name for layer in model.layers if layer.weights and layer.name not in drop]
        file.attrs["layer_names"] = [n.encode("utf8") for n in names]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            if layer.name not in names:
                continue
            group = file.create_group(layer.name)
            variables = layer.trainable_weights + layer.non_trainable_weights
            weight_names = [f"{layer.name}/{v.name}:0" for v in variables]
            group.attrs["weight_names"] = [n.encode("utf8") for n in weight_names]
            for i, (name, variable) in enumerate(zip(weight_names, variables)):
                value = _numpy(variable)
                if layer.name == reshape and i == 0:
                    value = value[..., : value.shape[-1] // 2]
                group.create_dataset(name, data=value)


def test_legacy_h5_weights_load_by_name_as_keras_loads_them(mobilenet, tmp_path):
    path = tmp_path / "mobilenet_notop.h5"
    _write_legacy_h5(mobilenet.base, path)
    ours = ApplicationBackbone("mobilenet_v3_small", 8, SHAPE, weights=path).base
    # Keras' own loader of keras.applications files reads the same file the same way.
    keras_loaded = keras.applications.MobileNetV3Small(
        include_top=False, weights=str(path), input_shape=SHAPE
    )
    for a, b, c in zip(ours.weights, keras_loaded.weights, mobilenet.base.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(c), err_msg=a.path)
        np.testing.assert_array_equal(_numpy(b), _numpy(c), err_msg=b.path)


def test_weights_file_that_does_not_fit_names_the_first_layer(mobilenet, tmp_path):
    keras3 = tmp_path / "mobilenet.weights.h5"
    mobilenet.base.save_weights(keras3)
    with pytest.raises(BackboneError) as error:
        ApplicationBackbone("resnet50", 8, SHAPE, weights=keras3)
    assert str(error.value) == (
        f"{keras3} does not fit resnet50: layer 'conv1_conv' differs "
        "(file: (3, 3, 3, 16), backbone: (7, 7, 3, 64))"
    )
    reshaped = tmp_path / "reshaped.h5"
    _write_legacy_h5(mobilenet.base, reshaped, reshape="conv_bn")  # "conv" before it fits
    with pytest.raises(BackboneError) as error:
        ApplicationBackbone("mobilenet_v3_small", 8, SHAPE, weights=reshaped)
    assert str(error.value) == (
        f"{reshaped} does not fit mobilenet_v3_small: layer 'conv_bn' differs "
        "(file: (8,), backbone: (16,))"
    )
    dropped = tmp_path / "dropped.h5"
    _write_legacy_h5(mobilenet.base, dropped, drop=("conv",))
    with pytest.raises(BackboneError) as error:
        ApplicationBackbone("mobilenet_v3_small", 8, SHAPE, weights=dropped)
    assert str(error.value) == (
        f"{dropped} does not fit mobilenet_v3_small: layer 'conv' is missing from the file"
    )


def test_weights_path_missing_or_not_hdf5(tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        ApplicationBackbone("mobilenet_v3_small", 8, SHAPE, weights=missing)
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(BackboneError, match=r"weights.h5 is not an HDF5 weights file"):
        ApplicationBackbone("mobilenet_v3_small", 8, SHAPE, weights=text)


def test_imagenet_weights_without_network(monkeypatch):
    from keras.src.utils import file_utils  # what keras.applications download with

    def offline(*args, **kwargs):  # what get_file raises when urlretrieve cannot connect
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(BackboneError) as error:
        build_backbone("mobilenet_v3_small", CONFIG, weights="imagenet")
    assert str(error.value) == (
        "mobilenet_v3_small --backbone-weights imagenet needs the network to download Keras' "
        "ImageNet weights; pass a local weights file (--backbone-weights PATH)"
    )


def test_backbone_names_and_what_each_takes():
    known = (
        "vgg, mlp, identity, resnet50, efficientnetv2_b0, convnext_tiny, mobilenet_v3_small, "
        "kerashub:PRESET_OR_PATH"
    )
    for name in ("foo", "kerashub:", "ResNet50"):
        with pytest.raises(BackboneError) as error:
            build_backbone(name, CONFIG)
        assert str(error.value) == f"unknown backbone {name!r}; known: {known}"
    with pytest.raises(BackboneError, match="unknown backbone 'vgg'"):
        ApplicationBackbone("vgg", 8, SHAPE)
    with pytest.raises(BackboneError, match=r"vgg takes no --backbone-weights .*--imagenet-mat"):
        build_backbone("vgg", CONFIG, weights="imagenet")
    with pytest.raises(BackboneError) as error:
        build_backbone("mlp", CONFIG)
    assert str(error.value) == "mlp takes embeddings: give GPQConfig.input_dim"
    vectors = GPQConfig(num_subspaces=2, subspace_dim=4, num_classes=3, input_dim=16)
    with pytest.raises(BackboneError, match="resnet50 takes images, not embeddings"):
        build_backbone("resnet50", vectors)
    with pytest.raises(BackboneError, match="has no pretrained feature extractor"):
        build_feature_extractor("vgg", SHAPE)
    assert build_backbone("vgg", CONFIG).name == "backbone"


def test_build_feature_extractor_of_an_application():
    extractor = build_feature_extractor("mobilenet_v3_small", SHAPE)
    assert isinstance(extractor, keras.Model)
    assert tuple(extractor(PIXELS).shape) == (2, 576)


# --- KerasHub ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_preset(tmp_path_factory):
    """A tiny KerasHub ResNetBackbone saved to a preset folder (no download)."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=SHAPE,
    )
    folder = tmp_path_factory.mktemp("hub") / "tiny_resnet"
    backbone.save_to_preset(str(folder))
    return folder


def test_kerashub_preset_trains_saves_and_loads(hub_preset, tmp_path):
    keras.utils.set_random_seed(0)
    model = GPQ(CONFIG, backbone=f"kerashub:{hub_preset}")
    backbone = model.backbone
    assert isinstance(backbone, HubBackbone) and backbone.pixel_contract == "pixels"
    assert backbone.scale == pytest.approx(1 / 255) and backbone.offset == 0.0  # no converter
    assert tuple(backbone.feature_extractor(PIXELS).shape) == (2, 16)  # the last stage's width
    model.compile()
    _losses_finite(model.train_on_batch(BATCH, LABELS, return_dict=True))
    features = model.encode(PIXELS)
    path = tmp_path / "hub.keras"
    save_atomic(model, path)
    restored = load_gpq(path)
    assert isinstance(restored.backbone, HubBackbone)
    np.testing.assert_allclose(restored.encode(PIXELS), features, rtol=1e-5, atol=1e-5)


def test_kerashub_preset_image_converter_scale_and_offset(hub_preset, tmp_path):
    import keras_hub

    folder = tmp_path / "with_converter"
    shutil.copytree(hub_preset, folder)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=SHAPE[:2], scale=list(1 / (255 * std)), offset=list(-mean / std)
    )
    converter.save_to_preset(str(folder))
    backbone = hub_backbone_from_preset(folder, 8, SHAPE)
    np.testing.assert_allclose(backbone.scale, 1 / (255 * std), rtol=1e-6)
    np.testing.assert_allclose(backbone.offset, -mean / std, rtol=1e-6)
    rescaled = _numpy(backbone.get_layer("rescaling")(PIXELS))
    np.testing.assert_allclose(rescaled, (PIXELS / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert run_serialization_test(backbone).scale == backbone.scale


def test_kerashub_errors(hub_preset, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="No KerasHub preset folder at .*nowhere"):
        hub_backbone_from_preset(tmp_path / "nowhere", 8, SHAPE)
    with pytest.raises(BackboneError, match=r"^kerashub:.*: cannot load the KerasHub preset: "):
        hub_backbone_from_preset(tmp_path, 8, SHAPE)  # a folder without config.json
    with pytest.raises(BackboneError, match="takes no --backbone-weights"):
        build_backbone(f"kerashub:{hub_preset}", CONFIG, weights="imagenet")
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if not installed
    with pytest.raises(BackboneError) as error:
        build_backbone(f"kerashub:{hub_preset}", CONFIG)
    assert str(error.value) == HUB_MISSING
    assert HUB_MISSING == (
        "--backbone kerashub:... needs the keras-hub package: pip install gpq-keras[hub]"
    )
