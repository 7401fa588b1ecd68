"""The `gpq` command line end to end on a tiny npz data set (16x16 digits, narrow VGG)."""

import csv
import json
import os
import re

import numpy as np
import original_retrieval as original
import pytest
import tensorflow as tf
from data_fakes import save_split
from numpy_reference import intra_norm

from gpq_keras import cli
from gpq_keras.data import digits
from gpq_keras.model import load_gpq


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images, labels = digits.load_images()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(images))[:140]
    small = tf.image.resize(images[pick], (16, 16)).numpy().round().astype(np.uint8)
    y = labels[pick]
    data = root / "tiny.npz"
    save_split(data, small, y, 20, 60)
    out = root / "run"
    rc = cli.main(
        [
            "train",
            "--data",
            f"npz:{data}",
            "--output",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "20",
            "--n-book",
            "3",
            "--n-word",
            "4",
            "--filters",
            "4,8,8,8",
            "--save-every",
            "1",
        ]
    )
    assert rc == 0
    return root, f"npz:{data}", out


@pytest.mark.large
def test_train_writes_model_checkpoints_and_log(workspace):
    _, _, out = workspace
    model = load_gpq(out / "model.keras")
    assert (
        model.gpq_config.num_subspaces,
        model.gpq_config.num_codewords,
        model.gpq_config.filters,
    ) == (3, 4, (4, 8, 8, 8))
    assert model.gpq_config.image_shape == (16, 16, 3) and model.gpq_config.num_classes == 10
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_001.keras", "epoch_002.keras"]
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert {"loss", "npq_loss", "cls_loss", "entropy_loss"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def _reference_map(model, split_npz, mode):
    """The original's evaluation re-stated with loops (tests/original_retrieval.py, NumPy float64);
    the consistent mode is the same algorithm with Z' and intra-normalised queries."""
    data = np.load(split_npz)
    m = model.gpq_config.num_subspaces
    queries, database = model.encode(data["x_query"]), model.encode(data["x_db"])
    codebook = model.codebook if mode == "original" else model.refined_codebook
    if mode == "consistent":
        queries = intra_norm(queries, m)
    relevant = original.label_similarity(data["y_query"], data["y_db"])
    mean_ap, codes, _ = original.original_map(codebook, m, database, queries, relevant)
    return mean_ap, codes


@pytest.mark.parametrize("mode", ["original", "consistent"])
@pytest.mark.large
def test_evaluate_prints_map_and_writes_json_and_figure(workspace, capsys, mode):
    root, spec, out = workspace
    report, figure = root / f"eval-{mode}.json", root / f"ranked-{mode}.png"
    rc = cli.main(
        [
            "evaluate",
            "--model",
            str(out / "model.keras"),
            "--data",
            spec,
            "--mode",
            mode,
            "--json",
            str(report),
            "--figure",
            str(figure),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert f"mAP: {result['mAP']:.4f}" in printed
    assert (
        result["top_k"],
        result["bits"],
        result["n_query"],
        result["n_database"],
        result["mode"],
    ) == (60, 6, 20, 60, mode)
    expected, _ = _reference_map(load_gpq(out / "model.keras"), spec[4:], mode)
    assert result["mAP"] == pytest.approx(expected, abs=1e-6)
    assert figure.stat().st_size > 1000
    # The figure shows the best, the median and the worst query by AP, not only a success.
    picked = re.search(
        r"good query (\d+) \(AP ([\d.]+)\), median query (\d+) \(AP ([\d.]+)\), "
        r"bad query (\d+) \(AP ([\d.]+)\)",
        printed,
    )
    assert picked, printed
    good, median, bad = (float(picked.group(i)) for i in (2, 4, 6))
    assert good >= median >= bad and good > bad


@pytest.mark.large
def test_encode_writes_codes_matching_the_reference(workspace):
    root, spec, out = workspace
    target = root / "codes.npz"
    assert (
        cli.main(
            [
                "encode",
                "--model",
                str(out / "model.keras"),
                "--data",
                spec,
                "--output",
                str(target),
                "--mode",
                "original",
            ]
        )
        == 0
    )
    data = np.load(target)
    assert data["features"].dtype == np.float32 and data["features"].shape == (60, 36)
    assert data["codes"].dtype == np.uint8 and data["codes"].shape == (60, 3)
    _, codes = _reference_map(load_gpq(out / "model.keras"), spec[4:], "original")
    np.testing.assert_array_equal(data["codes"], codes)
    np.testing.assert_array_equal(data["labels"], np.load(spec[4:])["y_db"])


@pytest.mark.large
def test_index_build_and_search(workspace, capsys):
    root, spec, out = workspace
    index, hits = root / "index.npz", root / "hits.npz"
    model = str(out / "model.keras")
    assert (
        cli.main(["index", "build", "--model", model, "--data", spec, "--output", str(index)]) == 0
    )
    assert (
        cli.main(
            [
                "index",
                "search",
                "--model",
                model,
                "--index",
                str(index),
                "--data",
                spec,
                "-k",
                "5",
                "--output",
                str(hits),
            ]
        )
        == 0
    )
    result = np.load(hits)
    assert result["ids"].shape == (20, 5) and result["distances"].shape == (20, 5)
    assert np.all(np.diff(result["distances"], axis=1) >= 0)
    assert "query 0:" in capsys.readouterr().out
    faiss_path = root / "index.faiss"
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                model,
                "--data",
                spec,
                "--output",
                str(faiss_path),
                "--faiss",
            ]
        )
        == 0
    )
    import faiss

    assert faiss.read_index(str(faiss_path)).ntotal == 60


@pytest.mark.large
def test_errors_are_one_line_with_status_2(workspace, capsys, tmp_path):
    root, spec, out = workspace
    cases = [
        (["evaluate", "--model", str(tmp_path / "missing.keras"), "--data", spec], "missing.keras"),
        (["evaluate", "--model", str(out / "model.keras"), "--data", "cifar100:x"], "cifar100"),
        (
            ["evaluate", "--model", str(out / "model.keras"), "--data", "digits"],
            "expects (16, 16, 3)",
        ),
        (
            ["train", "--data", spec, "--output", str(tmp_path / "r"), "--n-word", "6"],
            "num_codewords",
        ),
        (
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "nothing.ckpt"),
                "--output",
                str(tmp_path / "m.keras"),
            ],
            "nothing.ckpt",
        ),
    ]
    for argv, needle in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"gpq {argv[0]}: error:") and needle in err[0], (
            err
        )
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize(
    "command",
    [["train"], ["evaluate"], ["encode"], ["convert"], ["index", "build"], ["index", "search"]],
)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "gpq " + command[0] in text


@pytest.mark.large
def test_train_initialises_the_backbone_from_imagenet_mat(workspace, tmp_path, capsys):
    """`gpq train --imagenet-mat`: the original's .mat keys (TF1 names with :0, (1, N) vectors) land
    in F."""
    import scipy.io

    from gpq_keras.convert import tf1_layer_names

    _, spec, _ = workspace
    rng = np.random.default_rng(3)
    values, expected = {}, {}
    reference = load_gpq(workspace[2] / "model.keras").backbone
    for layer_name, scope in tf1_layer_names().items():
        if layer_name == "feature_vector":
            continue  # the original does not initialise the dense layer from the file
        layer = reference.get_layer(layer_name)
        shapes = (
            {"kernel": layer.kernel.shape, "bias": (layer.filters,)}
            if layer_name.startswith("conv")
            else {"gamma": layer.gamma.shape, "beta": layer.beta.shape}
        )
        for name, shape in shapes.items():
            value = rng.normal(size=shape).astype(np.float32)
            values[f"{scope}/{name}:0"] = value if value.ndim > 1 else value[None]
            if name != "bias":  # a bias is folded into a moving mean, which training then moves
                expected[(layer_name, name)] = value
    mat = tmp_path / "ImageNet_pretrained.mat"
    scipy.io.savemat(mat, values)
    out = tmp_path / "run"
    # A learning rate of 1e-30: one epoch of training leaves the trainable weights as the file gave
    # them (float32 cannot take such a step).
    assert (
        cli.main(
            [
                "train",
                "--data",
                spec,
                "--output",
                str(out),
                "--epochs",
                "1",
                "--learning-rate",
                "1e-30",
                "--n-book",
                "3",
                "--n-word",
                "4",
                "--filters",
                "4,8,8,8",
                "--imagenet-mat",
                str(mat),
                "--val-per-class",
                "0",
            ]
        )
        == 0
    )
    assert f"backbone initialised from {mat}" in capsys.readouterr().out
    backbone = load_gpq(out / "model.keras").backbone
    for (layer_name, name), value in expected.items():
        np.testing.assert_array_equal(getattr(backbone.get_layer(layer_name), name).numpy(), value)


def _run_python(code, **env):
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **env},
    )


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--help"], 0),
        (["train", "--help"], 0),
        (["train", "--data", "digits", "--output", "x", "--epochs", "-1"], 2),
        (["index", "search", "--model", "m.keras"], 2),
    ],
)
def test_help_and_argument_errors_do_not_import_tensorflow(argv, status):
    code = (
        f"import sys\nfrom gpq_keras import cli\ntry:\n    cli.main({argv!r})\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('status', code, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = _run_python(code)
    assert f"status {status} False False" in result.stdout, result.stdout + result.stderr


@pytest.mark.large
def test_a_failing_run_prints_one_line_and_no_tensorflow_logging(tmp_path):
    """TensorFlow is imported (to load a model) but its start-up logging is silenced first."""
    code = "import sys\nfrom gpq_keras import cli\nsys.exit(cli.main(%r))" % (
        ["evaluate", "--model", str(tmp_path / "absent.keras"), "--data", "digits"]
    )
    result = _run_python(code)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gpq evaluate: error: No model file at {tmp_path / 'absent.keras'}"
    ], result.stderr
