"""tf.distribute: N replicas train exactly like one device with N times the batch.

This machine's CPU is split into two logical devices (conftest.py), so `MirroredStrategy` runs two
replicas; the multi-worker test starts two `gpq train` processes on 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fakes import save_split

from gpq_keras import GPQ, cli
from gpq_keras.config import GPQConfig
from gpq_keras.distribute import check_global_batch, make_strategy, read_tf_config
from gpq_keras.model import load_gpq

CONFIG = GPQConfig(
    num_subspaces=3,
    num_codewords=4,
    subspace_dim=4,
    num_classes=5,
    image_shape=(16, 16, 3),
    filters=(4, 8, 8, 8),
)
HALF = 8  # images per replica and stream; the global batch is 2 * HALF


def _two_cpus():
    strategy = make_strategy("mirrored")  # the two logical CPUs; one strategy for the whole process
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _global_batch():
    rng = np.random.default_rng(0)
    shift = np.repeat([0.0, 60.0], HALF)[
        :, None, None, None
    ]  # pixels; the second replica's half is brighter
    labeled = (100.0 + 50.0 * rng.standard_normal((2 * HALF, 16, 16, 3)) + shift).astype("float32")
    unlabeled = (150.0 + 70.0 * rng.standard_normal((2 * HALF, 16, 16, 3)) - shift).astype(
        "float32"
    )
    labels = rng.integers(0, CONFIG.num_classes, 2 * HALF)
    return tf.data.Dataset.from_tensors(({"labeled": labeled, "unlabeled": unlabeled}, labels))


def _one_step(strategy, config, start):
    """One `fit` step on the global batch from the weights `start`
    -> (model, {loss name: value})."""
    with strategy.scope():
        model = GPQ(config)
        model.compile()
    for variable, value in zip(model.weights, start):
        variable.assign(value)
    history = model.fit(_global_batch(), epochs=1, verbose=0).history
    return model, {name: values[0] for name, values in history.items()}


def _updates(model, start):
    return {v.path: v.numpy() - w for v, w in zip(model.weights, start)}


@pytest.fixture(scope="module")
def start_and_one_device():
    """Initial weights, and one single-device step from them (sync_batch_norm makes no difference
    there)."""
    keras.utils.set_random_seed(0)
    start = [v.numpy() for v in GPQ(CONFIG).weights]
    model, losses = _one_step(tf.distribute.get_strategy(), CONFIG, start)
    return start, _updates(model, start), losses


@pytest.mark.large  # a traced fit step per strategy (~10 s each)
def test_one_device_is_unchanged_by_sync_batch_norm(start_and_one_device):
    start, updates, losses = start_and_one_device
    model, synced = _one_step(
        tf.distribute.get_strategy(), CONFIG.replace(sync_batch_norm=True), start
    )
    assert synced == losses
    for path, update in _updates(model, start).items():
        np.testing.assert_array_equal(update, updates[path], err_msg=path)


@pytest.mark.large  # a traced fit step per strategy (~10 s each)
def test_mirrored_step_with_sync_batch_norm_equals_one_device_step(start_and_one_device):
    start, want, losses = start_and_one_device
    model, got = _one_step(_two_cpus(), CONFIG.replace(sync_batch_norm=True), start)
    assert model.distribute_strategy.num_replicas_in_sync == 2
    # the N-pair loss over the global batch, not each replica's half
    for name, value in losses.items():
        assert abs(got[name] - value) <= 1e-4 * abs(value), (name, got[name], value)
    checked = 0
    for path, update in _updates(model, start).items():
        if not np.any(want[path]):
            continue
        error = np.linalg.norm(update - want[path]) / np.linalg.norm(want[path])
        assert error <= 1e-3, (
            path,
            error,
        )  # weights, Adam's update and batch-norm moving statistics
        checked += 1
    assert checked == len(model.weights)  # every weight moved: none is left out of the comparison
    for layer in ("batch0", "batch3_2"):
        copies = model.backbone.get_layer(layer).moving_variance.value.values
        np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())


@pytest.mark.large  # a traced fit step per strategy (~10 s each)
def test_mirrored_step_without_sync_batch_norm_differs_as_stated(start_and_one_device):
    """Without sync batch norm each replica normalises its half with that half's statistics: the
    features, hence every loss, differ; the first layer's moving mean (the mean of the halves'
    means) still matches, its moving variance (the mean of the halves' variances, missing the spread
    between them) does not."""
    start, want, losses = start_and_one_device
    model, got = _one_step(_two_cpus(), CONFIG, start)
    assert abs(got["loss"] - losses["loss"]) > 1e-4 * abs(losses["loss"])
    updates = _updates(model, start)
    mean, variance = "batch0/moving_mean", "batch0/moving_variance"
    assert np.linalg.norm(updates[mean] - want[mean]) <= 1e-3 * np.linalg.norm(want[mean])
    assert np.linalg.norm(updates[variance] - want[variance]) > 1e-2 * np.linalg.norm(
        want[variance]
    )


def test_global_batch_must_split_evenly_over_the_replicas():
    check_global_batch(10, _two_cpus())
    with pytest.raises(
        ValueError, match="the global batch of 9 images does not split evenly over 2 replicas"
    ):
        check_global_batch(9, _two_cpus())


@pytest.mark.parametrize(
    "value, needle",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG is not a valid cluster description"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "task worker 3 is not in",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, needle):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=needle):
        read_tf_config()
    with pytest.raises(ValueError, match=needle):
        make_strategy("multi-worker")


def _write_data(path, count=200):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(count) % 5
    save_split(path, images, labels, 10, 90)
    return f"npz:{path}"


TRAIN = [
    "--batch-size",
    "20",
    "--n-book",
    "3",
    "--n-word",
    "4",
    "--filters",
    "4,8,8,8",
    "--val-per-class",
    "2",
    "--eval-every",
    "2",
]


def _log(folder):
    import csv

    with open(os.path.join(folder, "log.csv")) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.large
def test_cli_mirrored_trains_and_encodes_like_one_device(tmp_path, capsys):
    data = _write_data(tmp_path / "data.npz")
    runs = {}
    for strategy in ("one", "mirrored"):
        out = tmp_path / strategy
        assert (
            cli.main(
                [
                    "train",
                    "--data",
                    data,
                    "--output",
                    str(out),
                    "--epochs",
                    "2",
                    "--strategy",
                    strategy,
                    "--sync-batch-norm",
                    *TRAIN,
                ]
            )
            == 0
        )
        runs[strategy] = out
    record = json.loads((runs["mirrored"] / "run.json").read_text())
    assert record["replicas"] == 2 and record["config"]["sync_batch_norm"] is True
    one, two = _log(runs["one"]), _log(runs["mirrored"])
    for row_one, row_two in zip(one, two):
        for key in ("loss", "npq_loss", "cls_loss", "entropy_loss"):
            assert abs(float(row_two[key]) - float(row_one[key])) <= 1e-4 * abs(
                float(row_one[key])
            ), key
    assert abs(float(two[-1]["val_mAP"]) - float(one[-1]["val_mAP"])) <= 1e-4

    codes = {}
    for strategy in ("one", "mirrored"):
        out = tmp_path / f"codes_{strategy}.npz"
        assert (
            cli.main(
                [
                    "encode",
                    "--model",
                    str(runs["mirrored"] / "model.keras"),
                    "--data",
                    data,
                    "--output",
                    str(out),
                    "--strategy",
                    strategy,
                ]
            )
            == 0
        )
        codes[strategy] = np.load(out)
    np.testing.assert_allclose(
        codes["mirrored"]["features"], codes["one"]["features"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(codes["mirrored"]["codes"], codes["one"]["codes"])

    capsys.readouterr()
    assert (
        cli.main(
            [
                "train",
                "--data",
                data,
                "--output",
                str(tmp_path / "odd"),
                "--epochs",
                "1",
                "--strategy",
                "mirrored",
                *TRAIN[2:],
                "--batch-size",
                "9",
            ]
        )
        == 2
    )
    assert "does not split evenly over 2 replicas" in capsys.readouterr().err


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_workers(tmp_path, data, epochs):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        argv = [
            sys.executable,
            "-m",
            "gpq_keras.cli",
            "train",
            "--data",
            data,
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            str(epochs),
            "--strategy",
            "multi-worker",
            "--backup-every-steps",
            "1",
            "--scratch",
            str(tmp_path / f"scratch{index}"),
            *TRAIN,
        ]
        log = open(tmp_path / f"worker{index}.log", "a")
        workers.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return workers


def _wait(process, seconds):
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.mark.large
def test_multi_worker_run_killed_and_rerun_resumes_and_matches_one_device(tmp_path):
    data = _write_data(tmp_path / "data.npz")
    run, metadata = tmp_path / "run", tmp_path / "run" / "backup" / "training_metadata.json"

    workers = _launch_workers(tmp_path, data, epochs=4)  # 4 steps an epoch
    deadline = time.time() + 300
    while not (metadata.exists() and json.loads(metadata.read_text())["step"] >= 5):
        assert time.time() < deadline and workers[0].poll() is None, (
            tmp_path / "worker0.log"
        ).read_text()[-3000:]
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGKILL)  # a machine lost mid-run; the chief then stops too
    assert _wait(workers[0], 120) != 0
    killed_at = json.loads(metadata.read_text())["step"]

    workers = _launch_workers(tmp_path, data, epochs=4)  # the same command on both machines
    codes = [_wait(worker, 400) for worker in workers]
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)]

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["replicas"] == 2
    assert record["resumed"] == [{"step": killed_at, "epoch": killed_at // 4}]
    # Only the chief wrote the run folder; the other worker wrote the same files to its scratch
    # folder.
    scratch = tmp_path / "scratch1"
    assert sorted(os.listdir(scratch)) == sorted(os.listdir(run))
    assert (
        record["task"] == "worker 0"
        and json.loads((scratch / "run.json").read_text())["task"] == "worker 1"
    )
    chief, other = load_gpq(run / "model.keras"), load_gpq(scratch / "model.keras")
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    # Before the kill, two workers trained as one device on the same global batch.
    assert (
        cli.main(
            [
                "train",
                "--data",
                data,
                "--output",
                str(tmp_path / "one"),
                "--epochs",
                "1",
                "--strategy",
                "one",
                "--sync-batch-norm",
                *TRAIN,
            ]
        )
        == 0
    )
    want, got = _log(tmp_path / "one")[0], _log(run)[0]
    for key in ("loss", "npq_loss", "cls_loss", "entropy_loss"):
        assert abs(float(got[key]) - float(want[key])) <= 1e-4 * abs(float(want[key])), key
