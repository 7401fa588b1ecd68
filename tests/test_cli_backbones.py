"""`gpq train --backbone ...` end to end: embeddings from an .npz on the mlp and identity heads
(train, evaluate, encode, index build, search), a keras.applications backbone on a photo folder
from a local weights file (frozen, slower backbone), and the one-line refusals."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from data_fakes import signal_embeddings

from gpq_keras import cli
from gpq_keras.cli.common import APPLICATIONS
from gpq_keras.model import load_gpq

pytestmark = pytest.mark.large  # end to end through the CLI: in `make test`

TINY = ["--n-book", "3", "--n-word", "4", "--epochs", "2", "--batch-size", "20"]


def _error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpq {command}: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """An .npz of embeddings with its own parts (queries, database, labeled)."""
    x_l, y_l, x_u, y_u, x_q, y_q = signal_embeddings(seed=1, dim=36, labeled=10, unlabeled=120)
    path = tmp_path_factory.mktemp("vectors") / "vectors.npz"
    np.savez(path, x_query=x_q, y_query=y_q, x_db=x_u, y_db=y_u, x_labeled=x_l, y_labeled=y_l)
    return path


@pytest.fixture(scope="module")
def vector_run(vectors, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mlp"
    argv = ["train", "--data", f"npz:{vectors}", "--output", out, *TINY, "--mlp-width", "16"]
    assert cli.main([str(a) for a in argv]) == 0
    return out


def test_embeddings_train_evaluate_encode_index_and_search(vectors, vector_run, tmp_path, capsys):
    model = load_gpq(str(vector_run / "model.keras"))
    assert model.takes_vectors and model.gpq_config.input_dim == 36
    assert type(model.backbone).__name__ == "EmbeddingBackbone"
    assert model.backbone.get_layer(index=1).units == 16  # --mlp-width
    record = json.loads((vector_run / "run.json").read_text())
    assert record["settings"]["mlp_width"] == 16 and record["settings"]["backbone"] == "mlp"
    model_file, data = str(vector_run / "model.keras"), f"npz:{vectors}"
    report = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--model", model_file, "--data", data, "--json", str(report)]) == 0
    assert 0 <= json.loads(report.read_text())["mAP"] <= 1
    codes = tmp_path / "codes.npz"
    assert cli.main(["encode", "--model", model_file, "--data", data, "--output", str(codes)]) == 0
    with np.load(vectors) as arrays, np.load(codes) as encoded:
        want = model.encode(arrays["x_db"])
        np.testing.assert_allclose(encoded["features"], want, rtol=1e-5, atol=1e-5)
    index = tmp_path / "index.npz"
    argv = ["index", "build", "--model", model_file, "--data", data, "--output", str(index)]
    assert cli.main(argv) == 0
    argv = ["index", "search", "--model", model_file, "--index", str(index), "--data", data]
    assert cli.main(argv + ["-k", "5"]) == 0
    capsys.readouterr()

    # a model on embeddings refuses images, one line
    assert cli.main(["evaluate", "--model", model_file, "--data", "digits"]) == 2
    assert "the model takes embeddings (N, 36); got images" in _error(capsys, "evaluate")


def test_identity_takes_embeddings_of_width_m_times_d(tmp_path, capsys):
    x_l, y_l, x_u, y_u, x_q, y_q = signal_embeddings(seed=2, dim=48, labeled=10, unlabeled=100)
    path = tmp_path / "wide.npz"
    np.savez(path, x_query=x_q, y_query=y_q, x_db=x_u, y_db=y_u, x_labeled=x_l, y_labeled=y_l)
    out = tmp_path / "identity"
    argv = ["train", "--data", f"npz:{path}", "--output", out, "--backbone", "identity", *TINY]
    argv[argv.index("--n-book") + 1] = "4"  # M * d = 4 * 12 = 48, the width
    assert cli.main([str(a) for a in argv]) == 0
    model = load_gpq(str(out / "model.keras"))
    np.testing.assert_allclose(model.encode(x_q[:5]), x_q[:5], rtol=1e-6)  # F is the identity
    argv[argv.index("--n-book") + 1] = "3"
    argv[argv.index("--output") + 1] = str(tmp_path / "narrow")
    assert cli.main([str(a) for a in argv]) == 2
    assert "48" in _error(capsys, "train")


def _photos(root, rng, per_class=6, size=40):
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        os.makedirs(root / f"class{c}")
        for i in range(per_class):
            image = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255)
            tf.io.write_file(
                str(root / f"class{c}" / f"{i}.png"), tf.io.encode_png(image.astype(np.uint8))
            )
    return root


def test_an_application_backbone_from_a_weights_file_frozen_or_slower(tmp_path):
    import keras

    from gpq_keras.backbones import ApplicationBackbone

    photos = _photos(tmp_path / "photos", np.random.default_rng(0))
    keras.utils.set_random_seed(3)
    source = ApplicationBackbone("mobilenet_v3_small", 8, (32, 32, 3))
    weights = tmp_path / "mobilenet.weights.h5"
    source.base.save_weights(str(weights))
    common = ["--data", f"folder:{photos}", "--image-size", "32", *TINY, "--val-per-class", "1"]
    common += ["--backbone", "mobilenet_v3_small", "--backbone-weights", str(weights)]
    frozen_run = tmp_path / "frozen"
    argv = ["train", *common, "--output", frozen_run, "--freeze-backbone"]
    assert cli.main([str(a) for a in argv]) == 0
    frozen = load_gpq(str(frozen_run / "model.keras"))
    assert frozen.freeze_backbone and type(frozen.backbone).__name__ == "ApplicationBackbone"
    for got, want in zip(frozen.backbone.base.weights, source.base.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
    settings = json.loads((frozen_run / "run.json").read_text())["settings"]
    assert settings["backbone"] == "mobilenet_v3_small" and settings["freeze_backbone"]
    assert settings["backbone_weights"] == str(weights)

    slow_run = tmp_path / "slow"
    argv = ["train", *common, "--output", slow_run, "--backbone-learning-rate-multiplier", "0.1"]
    assert cli.main([str(a) for a in argv]) == 0
    slow = load_gpq(str(slow_run / "model.keras"))
    assert slow.backbone_learning_rate_multiplier == 0.1
    moved = [
        np.abs(got.numpy() - want.numpy()).max()
        for got, want in zip(slow.backbone.base.trainable_weights, source.base.trainable_weights)
    ]
    assert max(moved) > 0  # it fine-tunes, slower: test_optimizers checks the factor


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--backbone", "resnet5"], "unknown backbone 'resnet5'; known: vgg, mlp, identity"),
        (["--backbone", "mlp"], "--backbone mlp: --data 'digits' holds images"),
        (["--backbone", "resnet50", "--filters", "4,4,4,4"], "--filters sets the vgg backbone"),
        (["--mlp-width", "8"], "--mlp-width sets the mlp backbone; --backbone is vgg"),
        (
            ["--backbone", "resnet50", "--backbone-weights", "none", "--imagenet-mat", "x.mat"],
            "--imagenet-mat sets the vgg backbone",
        ),
        (["--backbone-weights", "imagenet"], "vgg takes no --backbone-weights"),
        (
            ["--backbone", "resnet50", "--backbone-weights", "missing.weights.h5"],
            "missing.weights.h5",
        ),
    ],
)
def test_bad_backbone_flags_are_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", "digits", "--output", str(out), *TINY, *argv]) == 2
    assert needle in _error(capsys, "train")
    assert not out.exists() or os.listdir(out) in ([], [".lock"])  # nothing written


def test_embeddings_refuse_image_flags(vectors, tmp_path, capsys):
    base = ["train", "--data", f"npz:{vectors}", "--output", str(tmp_path / "run"), *TINY]
    assert cli.main([*base, "--image-size", "64"]) == 2
    assert "holds embeddings, not images" in _error(capsys, "train")
    assert cli.main([*base, "--backbone", "vgg"]) == 2
    assert "holds embeddings (N, D); use mlp or identity" in _error(capsys, "train")


def test_the_clis_application_names_are_the_backbones():
    from gpq_keras.backbones import APPLICATIONS as NAMES

    assert tuple(NAMES) == APPLICATIONS
