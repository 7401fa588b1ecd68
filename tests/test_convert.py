"""Compatibility with the original release: TF1 checkpoint conversion and ImageNet_pretrained.mat
loading.

The checkpoints are written by `tf1_reference`, a TF1-graph re-statement of the original network
saved with a TF1 Saver (random weights, non-trivial batch-norm statistics, Adam slots and
zero-debias accumulators).
"""

import os
import re

import numpy as np
import original_retrieval as original
import pytest
import scipy.io
import tf1_reference as ref

from gpq_keras.config import GPQConfig
from gpq_keras.convert import (
    ConversionError,
    convert_tf1_checkpoint,
    infer_config,
    load_imagenet_mat,
)
from gpq_keras.model import GPQ, load_gpq, save_atomic

TINY = dict(filters=(4, 8, 8, 8), num_subspaces=3, num_codewords=4, subspace_dim=4, num_classes=5)
TINY_CONFIG = GPQConfig(
    num_subspaces=3,
    num_codewords=4,
    subspace_dim=4,
    num_classes=5,
    image_shape=(16, 16, 3),
    filters=(4, 8, 8, 8),
)
N_QUERY, N_DB = 12, 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The original architecture at tiny widths on 16x16 images, saved as `48bits_example.ckpt`."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((N_QUERY + N_DB, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, TINY["num_classes"], N_QUERY + N_DB)
    prefix = tmp_path_factory.mktemp("original") / "48bits_example.ckpt"
    out = ref.make_tf1_checkpoint(prefix, images, seed=2, **TINY)
    # `images` are the original graph's (normalised) inputs; `pixels` the same for gpq_keras models
    return dict(out, prefix=str(prefix), images=images, pixels=ref.to_pixels(images), labels=labels)


def _similarity(labels):
    return original.label_similarity(labels[:N_QUERY], labels[N_QUERY:])


def test_converted_model_matches_tf1_features_codes_and_map(tiny):
    model = convert_tf1_checkpoint(
        tiny["prefix"], config={"num_subspaces": 3, "image_shape": [16, 16, 3]}
    )
    cfg = model.gpq_config
    assert (cfg.num_subspaces, cfg.num_codewords, cfg.subspace_dim, cfg.num_classes) == (3, 4, 4, 5)
    assert cfg.filters == (4, 8, 8, 8) and cfg.retrieval_mode == "original"

    features = model.encode(tiny["pixels"])
    np.testing.assert_allclose(features, tiny["features"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.codebook, tiny["Z"])
    np.testing.assert_array_equal(model.prototypes, tiny["C"])

    sim = _similarity(tiny["labels"])
    tf1 = tiny["features"]
    want_map, want_codes, want_dist = original.original_map(
        tiny["Z"], 3, tf1[N_QUERY:], tf1[:N_QUERY], sim
    )
    got_map, got_codes, got_dist = original.original_map(
        model.codebook, cfg.num_subspaces, features[N_QUERY:], features[:N_QUERY], sim
    )
    assert len(np.unique(want_codes)) > 1 and 0.0 < want_map < 1.0  # a test that could fail
    np.testing.assert_array_equal(got_codes, want_codes)
    np.testing.assert_allclose(got_dist, want_dist, atol=1e-5)
    assert abs(got_map - want_map) <= 1e-6

    # The package's retrieval (what `gpq evaluate --mode original` runs) agrees with the original's
    # loops.
    from gpq_keras import metrics, retrieval

    labels = tiny["labels"]
    index = retrieval.PQIndex.from_model(model)  # the config's retrieval_mode: "original"
    index.add(features[N_QUERY:])
    np.testing.assert_array_equal(index.codes, want_codes)
    np.testing.assert_allclose(index.distances(features[:N_QUERY]), want_dist, atol=1e-5)
    result = metrics.evaluate_ranking(
        index.rank(features[:N_QUERY]), labels[:N_QUERY], labels[N_QUERY:]
    )
    assert abs(result["mAP"] - want_map) <= 1e-6
    ranking = np.argsort(got_dist, axis=1, kind="stable")
    assert (
        abs(metrics.mean_average_precision(ranking, labels[:N_QUERY], labels[N_QUERY:]) - want_map)
        <= 1e-6
    )


def test_converted_checkpoint_loads_with_sync_batch_norm_too(tiny, tmp_path):
    model = convert_tf1_checkpoint(
        tiny["prefix"],
        config={"num_subspaces": 3, "image_shape": [16, 16, 3], "sync_batch_norm": True},
    )
    assert model.gpq_config.sync_batch_norm and model.backbone.get_layer("batch0").synchronized
    np.testing.assert_allclose(model.encode(tiny["pixels"]), tiny["features"], rtol=1e-5, atol=1e-5)
    save_atomic(model, tmp_path / "synced.keras")
    loaded = load_gpq(tmp_path / "synced.keras")
    assert loaded.backbone.get_layer("batch0").synchronized
    np.testing.assert_array_equal(loaded.encode(tiny["pixels"]), model.encode(tiny["pixels"]))


def test_report_maps_every_weight_once_and_skips_training_leftovers(tiny):
    overrides = {"num_subspaces": 3, "image_shape": [16, 16, 3]}
    # A path to one of the prefix's files works too.
    model, report = convert_tf1_checkpoint(
        tiny["prefix"] + ".index", config=overrides, return_report=True
    )
    assert report.source == tiny["prefix"]
    assert len(report.mapped) == 64  # every variable of the original's network, once
    folded = [row for row in report.mapped if row[1].endswith("(- conv bias)")]
    assert len(folded) == 10 and all(
        row[0].endswith("/bias") and "conv2d" in row[0] for row in folded
    )
    assert (
        len({row[1] for row in report.mapped}) == len(model.weights) + 10 == 64
    )  # the convs have no bias
    reasons = [reason for _, _, reason in report.skipped]
    assert reasons.count("Adam slot") == 2 * 44  # 42 backbone trainables + Z + C, two slots each
    assert reasons.count("zero-debias accumulator") == 20
    assert reasons.count("Adam power accumulator") == 2
    assert len(report.mapped) + len(report.skipped) == len(tiny["values"])
    table = report.table()
    assert re.search(
        r"^Fixed_VGG/conv2d_9/kernel +backbone/conv3_2/kernel +\[3, 3, 8, 8\]$", table, re.M
    )
    assert re.search(
        r"^Fixed_VGG/batch2-1/moving_mean +backbone/batch2_1/moving_mean +\[8\]$", table, re.M
    )
    assert re.search(
        r"^Fixed_VGG/conv2d_5/bias +backbone/batch2_1/moving_mean \(- conv bias\) +\[8\]$",
        table,
        re.M,
    )
    assert "M=3 K=4 d=4" in table


@pytest.mark.large
def test_full_width_48bit_checkpoint_converts_with_inferred_config(tmp_path):
    images = np.random.default_rng(3).standard_normal((3, 32, 32, 3)).astype(np.float32)
    prefix = tmp_path / "48bits_example.ckpt"
    out = ref.make_tf1_checkpoint(prefix, images, seed=4)  # the original: 64..512, M=12, K=16, d=12
    model = convert_tf1_checkpoint(prefix)
    cfg = model.gpq_config
    assert (cfg.num_subspaces, cfg.num_codewords, cfg.subspace_dim, cfg.num_classes, cfg.bits) == (
        12,
        16,
        12,
        10,
        48,
    )
    assert cfg.filters == (64, 128, 256, 512) and cfg.image_shape == (32, 32, 3)
    assert cfg.retrieval_mode == "original"
    features = model.encode(ref.to_pixels(images))
    np.testing.assert_allclose(features, out["features"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        original.indexing(model.codebook, features, 12),
        original.indexing(out["Z"], out["features"], 12),
    )


@pytest.mark.large
def test_conv_scopes_are_ordered_by_numeric_suffix(tiny, tmp_path):
    # conv2d, conv2d_1 .. conv2d_9 renamed conv2d_1 .. conv2d_10: in string order conv2d_10 would be
    # second.
    def shift(name):
        m = re.match(r"^Fixed_VGG/conv2d(?:_(\d+))?/(.*)$", name)
        return f"Fixed_VGG/conv2d_{int(m.group(1) or 0) + 1}/{m.group(2)}" if m else name

    prefix = tmp_path / "shifted.ckpt"
    ref.write_checkpoint(prefix, {shift(n): v for n, v in tiny["values"].items()})
    model = convert_tf1_checkpoint(prefix, config=TINY_CONFIG)
    np.testing.assert_allclose(
        model.encode(tiny["pixels"][:4]), tiny["features"][:4], rtol=1e-5, atol=1e-5
    )


@pytest.mark.large
@pytest.mark.parametrize("case", ["missing", "unknown", "shape"])
def test_broken_checkpoint_raises_listing_names_and_shapes(tiny, tmp_path, case):
    values = dict(tiny["values"])
    if case == "missing":
        del values["Fixed_VGG/conv2d_3/kernel"]
        expected = "Fixed_VGG/conv2d_3/kernel [3, 3, 8, 8]"
    elif case == "unknown":
        values["Fixed_VGG/attention/weights"] = np.zeros((2, 7), np.float32)
        expected = "Fixed_VGG/attention/weights [2, 7]"
    else:
        values["Fixed_VGG/batch2-1/gamma"] = np.ones(9, np.float32)
        expected = "Fixed_VGG/batch2-1/gamma [9] vs model [8]"
    prefix = tmp_path / "broken.ckpt"
    ref.write_checkpoint(prefix, values)
    with pytest.raises(ConversionError) as info:
        convert_tf1_checkpoint(prefix, config=TINY_CONFIG)
    exc = info.value
    first_line = str(exc).splitlines()[0]
    assert expected in first_line and str(prefix) in first_line
    assert {"missing": exc.missing, "unknown": exc.unexpected, "shape": exc.mismatched}[case]
    assert len(exc.missing) + len(exc.unexpected) + len(exc.mismatched) == 1
    if case == "missing":
        assert exc.missing == [
            ("Fixed_VGG/conv2d_3/kernel", (3, 3, 8, 8), "backbone/conv1_1/kernel")
        ]
    if case == "shape":
        assert exc.mismatched == [
            ("Fixed_VGG/batch2-1/gamma", (9,), "backbone/batch2_1/gamma", (8,))
        ]


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.ckpt\.index"):
        convert_tf1_checkpoint(tmp_path / "nothing.ckpt")


def test_infer_config_needs_z_and_c_and_a_divisible_width():
    shapes = {"Z": (16, 144), "C": (10, 144)}
    assert infer_config(shapes).num_subspaces == 12
    assert infer_config(shapes, {"subspace_dim": 24}).num_subspaces == 6
    assert infer_config(shapes, {"len_code": 24}).num_subspaces == 6  # the old key names work too
    with pytest.raises(ConversionError, match=r"cannot convert: 1 missing \(C \[\?\]\)"):
        infer_config({"Z": (16, 144)})
    with pytest.raises(ConversionError, match="not a multiple of the original d = 12"):
        infer_config({"Z": (16, 20), "C": (10, 20)})
    with pytest.raises(ConversionError, match="num_subspaces=7 does not divide"):
        infer_config(shapes, {"num_subspaces": 7})


@pytest.mark.large
def test_save_atomic_round_trip_and_cli_convert(tiny, tmp_path, capsys):
    from gpq_keras import cli

    model = convert_tf1_checkpoint(tiny["prefix"], config=TINY_CONFIG)
    path = tmp_path / "lib" / "gpq.keras"
    save_atomic(model, path)
    assert os.listdir(path.parent) == ["gpq.keras"]
    np.testing.assert_allclose(
        load_gpq(path).encode(tiny["pixels"][:4]), tiny["features"][:4], rtol=1e-5, atol=1e-5
    )

    config_json = tmp_path / "config.json"
    # Only what the shapes cannot tell; the rest (and retrieval_mode="original") is inferred.
    config_json.write_text(
        __import__("json").dumps({"image_shape": [16, 16, 3], "num_subspaces": 3})
    )
    output = tmp_path / "converted" / "gpq_cifar10_48bit.keras"
    assert (
        cli.main(
            [
                "convert",
                "--checkpoint",
                tiny["prefix"],
                "--output",
                str(output),
                "--config",
                str(config_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Fixed_VGG/conv2d_9/kernel" in printed and "backbone/conv3_2/kernel" in printed
    assert load_gpq(output).gpq_config.retrieval_mode == "original"

    values = dict(tiny["values"])
    del values["Fixed_VGG/dense/bias"]
    ref.write_checkpoint(tmp_path / "broken.ckpt", values)
    refused = tmp_path / "refused.keras"
    assert (
        cli.main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "broken.ckpt"),
                "--output",
                str(refused),
                "--config",
                str(config_json),
            ]
        )
        == 2
    )
    assert "Fixed_VGG/dense/bias [12]" in capsys.readouterr().err
    assert not refused.exists()


def _mat_values(tiny):
    """The trainable Fixed_VGG values except dense, under their TF1 names with ':0', as the original
    file."""
    return {
        f"{name}:0": value
        for name, value in tiny["values"].items()
        if re.match(r"^Fixed_VGG/(conv2d(_\d+)?/(kernel|bias)|batch[\d-]+/(beta|gamma))$", name)
    }


def test_load_imagenet_mat_initialises_the_backbone(tiny, tmp_path):
    values = _mat_values(tiny)
    assert len(values) == 40
    path = tmp_path / "ImageNet_pretrained.mat"
    scipy.io.savemat(path, {**values, "Fixed_VGG/dense/kernel:0": np.ones((16, 12), np.float32)})
    assert scipy.io.loadmat(path)["Fixed_VGG/conv2d/bias:0"].shape == (
        1,
        4,
    )  # 1-D comes back (1, N)

    model = GPQ(config=TINY_CONFIG)
    backbone = model.backbone
    dense_before = backbone.get_layer("feature_vector").kernel.numpy().copy()
    with pytest.warns(UserWarning, match="Fixed_VGG/dense/kernel:0"):
        report = load_imagenet_mat(model, path)
    assert len(report.loaded) == 40
    assert report.unexpected == [("Fixed_VGG/dense/kernel:0", (16, 12))]
    for layer, weight, key in [
        ("conv0", "kernel", "Fixed_VGG/conv2d/kernel:0"),
        ("batch2_1", "gamma", "Fixed_VGG/batch2-1/gamma:0"),
        ("batch0", "beta", "Fixed_VGG/batch0/beta:0"),
    ]:
        np.testing.assert_array_equal(
            getattr(backbone.get_layer(layer), weight).numpy(), values[key]
        )
    # The convs have no bias: each is folded into the next batch norm's moving mean (0 before).
    np.testing.assert_array_equal(
        backbone.get_layer("batch3_2").moving_mean.numpy(),
        -values["Fixed_VGG/conv2d_9/bias:0"].ravel(),
    )
    np.testing.assert_array_equal(backbone.get_layer("feature_vector").kernel.numpy(), dense_before)
    np.testing.assert_array_equal(backbone.get_layer("batch1").moving_variance.numpy(), np.ones(8))


@pytest.mark.parametrize("case", ["missing", "shape"])
def test_load_imagenet_mat_reports_missing_and_misshapen_keys(tiny, tmp_path, case):
    values = _mat_values(tiny)
    if case == "missing":
        del values["Fixed_VGG/batch1-1/gamma:0"]
        expected = "1 missing (Fixed_VGG/batch1-1/gamma:0 [8])"
    else:
        values["Fixed_VGG/conv2d_4/kernel:0"] = np.zeros((3, 3, 8, 16), np.float32)
        expected = "Fixed_VGG/conv2d_4/kernel:0 [3, 3, 8, 16] vs model [3, 3, 8, 8]"
    path = tmp_path / "ImageNet_pretrained.mat"
    scipy.io.savemat(path, values)
    backbone = GPQ(config=TINY_CONFIG).backbone
    before = backbone.get_layer("conv0").kernel.numpy().copy()
    with pytest.raises(ConversionError) as info:
        load_imagenet_mat(backbone, path)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(f"{path}: cannot load: ") and expected in first_line
    np.testing.assert_array_equal(
        backbone.get_layer("conv0").kernel.numpy(), before
    )  # nothing loaded
