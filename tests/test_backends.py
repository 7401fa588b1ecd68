"""Keras backends: the same GPQ on TensorFlow (this process) and on JAX and torch (subprocesses),
and gpq_keras on JAX and torch with TensorFlow not installed (its import blocked)."""

import csv
import json
import os
import subprocess
import sys

import backend_worker
import numpy as np
import pytest
from data_fakes import save_split

from gpq_keras import GPQ, GPQConfig, cli
from gpq_keras.data import digits
from gpq_keras.model import load_gpq, save_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOSSES = ("loss", "npq_loss", "cls_loss", "entropy_loss")
TRAIN = [
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
    "--eval-every",
    "1",
    "--seed",
    "3",
]

pytestmark = pytest.mark.large


def python(args, tmp_path, backend="jax", block_tensorflow=False, timeout=900):
    """Run `python args...` in a fresh process on `backend` -> its stdout; TensorFlow's import made
    to fail with `block_tensorflow` (as on a machine without it)."""
    paths = [ROOT, HERE]
    if block_tensorflow:
        for name in ("tensorflow", "tensorflow_datasets"):
            package = tmp_path / "blocked" / name
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text(
                f"raise ImportError('{name} is not installed (blocked)')\n"
            )
        paths.insert(0, str(tmp_path / "blocked"))
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """140 digits at 16x16: 20 queries, 60 database (= unlabeled) and 60 labeled images."""
    images, labels = digits.load_images(16)
    pick = np.random.default_rng(0).permutation(len(images))[:140]
    x, y = images[pick], labels[pick]
    path = tmp_path_factory.mktemp("backends") / "tiny.npz"
    save_split(path, x, y, 20, 60)
    return path


def relative_error(a, b):
    """||a - b|| / ||a||."""
    return float(
        np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(a)), 1e-30)
    )


# Per backend: (losses' relative, all gradients' norm-relative, each variable's gradient's
# norm-relative) error allowed against TensorFlow on the same weights and batch (float32 sums in
# other orders; torch's own CPU kernels round differently from XLA's and TensorFlow's).
TOLERANCES = {"jax": (1e-5, 1e-5, 3e-5), "torch": (1e-5, 3e-5, 1e-4)}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_same_weights_and_batch_give_the_same_losses_and_gradients_on_tensorflow_and_another(
    tmp_path, tiny_config, backend
):
    """A model saved on TensorFlow loads on JAX and on torch; there `loss_and_gradients` (the
    objective and the gradient `train_step` applies) and the moving statistics a step leaves equal
    TensorFlow's (`TOLERANCES`), and the features too. A model saved there loads on TensorFlow with
    the features it had there."""
    loss_tolerance, gradient_tolerance, variable_tolerance = TOLERANCES[backend]
    model = GPQ(tiny_config)
    save_atomic(model, tmp_path / "tf.keras")
    rng = np.random.default_rng(0)
    batch = {
        "x_l": rng.uniform(0, 255, (8, 16, 16, 3)).astype(np.float32),
        "x_u": rng.uniform(0, 255, (8, 16, 16, 3)).astype(np.float32),
        "y": np.arange(8) % 5,
    }
    np.savez(tmp_path / "batch.npz", **batch)
    python(
        [os.path.join(HERE, "backend_worker.py"), "tf.keras", "batch.npz", "out.npz", "out.keras"],
        tmp_path,
        backend=backend,
    )
    on_other = dict(np.load(tmp_path / "out.npz"))
    assert str(on_other["backend"]) == backend
    on_tf = backend_worker.describe(model, batch)
    assert set(on_tf) <= set(on_other)
    for name in LOSSES:
        assert on_other[f"loss/{name}"] == pytest.approx(
            on_tf[f"loss/{name}"], rel=loss_tolerance, abs=1e-6
        ), name
    grads = sorted(key for key in on_tf if key.startswith("grad/"))
    assert len(grads) == len(model.trainable_variables)
    everything = relative_error(
        np.concatenate([on_tf[k].ravel() for k in grads]),
        np.concatenate([on_other[k].ravel() for k in grads]),
    )
    assert everything < gradient_tolerance, everything
    for key in grads:  # each variable's own: float32 sums in other orders, a few times 1e-6
        assert relative_error(on_tf[key], on_other[key]) < variable_tolerance, key
        assert np.abs(on_tf[key]).max() > 0, key
    for key in (k for k in on_tf if k.startswith("state/")):  # the step's batch-norm updates
        np.testing.assert_allclose(on_other[key], on_tf[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(on_other["features"], on_tf["features"], rtol=1e-5, atol=1e-6)

    saved_on_other = load_gpq(tmp_path / "out.keras")
    assert saved_on_other.gpq_config == model.gpq_config
    np.testing.assert_allclose(
        saved_on_other.predict(batch["x_l"], verbose=0),
        on_other["own_features"],
        rtol=1e-5,
        atol=1e-6,
    )
    assert (
        relative_error(saved_on_other.predict(batch["x_l"], verbose=0), on_tf["features"]) > 1e-2
    )  # its own
    if backend == "torch":  # and a model saved on torch loads on JAX with its features
        python(
            [os.path.join(HERE, "backend_worker.py"), "out.keras", "batch.npz", "jax.npz"],
            tmp_path,
            backend="jax",
        )
        np.testing.assert_allclose(
            np.load(tmp_path / "jax.npz")["features"],
            on_other["own_features"],
            rtol=1e-5,
            atol=1e-6,
        )


def _log(out):
    with open(out / "log.csv") as fh:
        return list(csv.DictReader(fh))


NO_TENSORFLOW = """
import json, sys
try:
    import tensorflow  # noqa: F401
    sys.exit("tensorflow imported")
except ImportError:
    pass
import gpq_keras
from gpq_keras import cli
train, evaluate = json.loads(sys.argv[1])
assert cli.main(train) == 0 and cli.main(evaluate) == 0
model = train[train.index("--output") + 1] + "/model.keras"
# a SavedModel needs TensorFlow
assert cli.main(["export", "--model", model, "--output", "served"]) == 2
print(json.dumps({"tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
                  "backend": __import__("keras").config.backend()}))
"""


def _run(tmp_path, tiny_npz, init, backend):
    """(train, evaluate) command lines of a `TRAIN` run from `init` into tmp_path/backend."""
    out = tmp_path / backend
    train = [
        "train",
        "--data",
        f"npz:{tiny_npz}",
        "--output",
        str(out),
        "--init-model",
        str(init),
        *TRAIN,
    ]
    evaluate = [
        "evaluate",
        "--model",
        str(out / "model.keras"),
        "--data",
        f"npz:{tiny_npz}",
        "--json",
        str(out / "eval.json"),
    ]
    return out, train, evaluate


def _finished(out, backend):
    """(log rows, eval.json, trained model) of the finished run in `out` on `backend`."""
    with open(out / "run.json") as fh:
        record = json.load(fh)
    assert (
        record["backend"] == backend
        and record["pipeline"] == "numpy"
        and record["status"] == "finished"
    )
    if backend != "tensorflow":
        assert "tensorflow" not in record["versions"]
    with open(out / "eval.json") as fh:
        return _log(out), json.load(fh), load_gpq(out / "model.keras")


@pytest.fixture(scope="module")
def tensorflow_run(tmp_path_factory, tiny_npz):
    """The start (init.keras) and the finished `TRAIN` run from it on TensorFlow, `--pipeline
    numpy` (the batches of every other backend) -> (init path, log rows, eval.json, model)."""
    tmp_path = tmp_path_factory.mktemp("tensorflow_run")
    init = tmp_path / "init.keras"
    config = GPQConfig(
        num_subspaces=3,
        num_codewords=4,
        num_classes=10,
        image_shape=(16, 16, 3),
        filters=(4, 8, 8, 8),
    )
    save_atomic(GPQ(config), init)  # what TRAIN configures
    out, train, evaluate = _run(tmp_path, tiny_npz, init, "tensorflow")
    assert cli.main([*train, "--pipeline", "numpy"]) == 0 and cli.main(evaluate) == 0
    return (init, *_finished(out, "tensorflow"))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_gpq_without_tensorflow_trains_and_evaluates_with_the_numbers_of_tensorflow(
    tmp_path, tiny_npz, tensorflow_run, backend
):
    """With TensorFlow not installed, `KERAS_BACKEND=jax|torch gpq train` (its NumPy PyDataset
    input) and `gpq evaluate` run without importing TensorFlow; started from the same weights
    (--init-model) on the same batches (`--pipeline numpy` on TensorFlow), they give TensorFlow's
    numbers: every epoch's losses and validation mAP, the trained weights and the evaluated mAP."""
    init, tf_log, tf_eval, tf_model = tensorflow_run
    out, train, evaluate = _run(tmp_path, tiny_npz, init, backend)
    if backend == "torch":
        train += ["--jit-compile", "off"]  # eager, Keras' default on torch
    stdout = python(
        ["-c", NO_TENSORFLOW, json.dumps([train, evaluate])],
        tmp_path,
        backend=backend,
        block_tensorflow=True,
    )
    assert json.loads(stdout.splitlines()[-1]) == {"tensorflow": [], "backend": backend}
    log, other_eval, other_model = _finished(out, backend)
    assert len(tf_log) == len(log) == 2
    for tf_row, row in zip(tf_log, log):
        for name in (*LOSSES, "val_mAP", "learning_rate"):
            assert float(row[name]) == pytest.approx(float(tf_row[name]), rel=1e-4, abs=1e-5), name
    assert 0.0 < tf_eval["mAP"] <= 1.0 and other_eval["mAP"] == pytest.approx(
        tf_eval["mAP"], abs=1e-4
    )
    start = load_gpq(init).get_weights()
    for a, b in zip(tf_model.get_weights(), other_model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    assert (
        max(np.abs(a - b).max() for a, b in zip(tf_model.get_weights(), start)) > 1e-3
    )  # they trained
