"""Long runs: resume after a kill or Ctrl-C, atomic checkpoints, the run folder, validation mAP,
XLA."""

import csv
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import original_retrieval as original
import pytest
from data_fakes import save_split
from numpy_reference import intra_norm
from run_helpers import wait_for_backup

from gpq_keras import GPQ, cli
from gpq_keras.data import digits
from gpq_keras.data.split import Split, hold_out_validation
from gpq_keras.distribute import make_strategy
from gpq_keras.metrics import codeword_entropy
from gpq_keras.training import (
    EpochLog,
    PeriodicCheckpoint,
    RetrievalValidation,
    RunDirectory,
    TrainingBackup,
    fit_run,
)

TINY_ARGS = ["--n-book", "3", "--n-word", "4", "--filters", "4,8,8,8"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """16x16 digits: 20 queries, 60 database (= unlabeled) images, 60 labeled images."""
    import tensorflow as tf

    images, labels = digits.load_images()
    pick = np.random.default_rng(0).permutation(len(images))[:140]
    small = tf.image.resize(images[pick], (16, 16)).numpy().round().astype(np.uint8)
    y = labels[pick]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_split(path, small, y, 20, 60)
    return path


def _split(path):
    from gpq_keras.data import load_data

    return load_data(f"npz:{path}")


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _one_error_line(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # a usage error, from argparse
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- the pieces -----------------------------------------------------------------------------------


class _Interrupt(keras.callbacks.Callback):
    """Ctrl-C after `at` steps of this fit."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def _tiny_model(tiny_config, seed=0, strategy="one"):
    keras.utils.set_random_seed(seed)
    with make_strategy(strategy).scope():
        model = GPQ(tiny_config.replace(num_classes=10, sync_batch_norm=strategy == "mirrored"))
        model.compile()
        model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.large
@pytest.mark.parametrize(
    "strategy", ["one", "mirrored"]
)  # mirrored: 2 replicas on the 2 logical CPUs
def test_a_run_interrupted_mid_epoch_resumes_to_the_same_weights(
    tiny_npz, tiny_config, tmp_path, strategy
):
    """Backups every 3 steps; Ctrl-C at step 8 of 3 epochs x 3 steps; the resumed run finishes epoch
    2 with its one remaining step (step 7 of the backup on), and ends with the weights of an
    uninterrupted run."""
    split = _split(tiny_npz)  # 60 labeled at batch 20: 3 steps per epoch
    kwargs = dict(epochs=3, batch_size=20, seed=4, backup_every_steps=3, verbose=0)
    whole = _tiny_model(tiny_config, strategy=strategy)
    fit_run(whole, split, RunDirectory(tmp_path / "whole"), **kwargs)

    run = RunDirectory(tmp_path / "cut")
    first = _tiny_model(tiny_config, strategy=strategy)
    with pytest.raises(KeyboardInterrupt):
        fit_run(first, split, run, callbacks=[_Interrupt(8)], **kwargs)
    assert json.load(open(os.path.join(run.backup, TrainingBackup.METADATA)))["step"] == 6
    assert [r["epoch"] for r in _rows(run.log)] == ["0", "1"]
    resumed = _tiny_model(
        tiny_config, seed=99, strategy=strategy
    )  # other initial weights: the backup wins
    assert resumed.distribute_strategy.num_replicas_in_sync == (2 if strategy == "mirrored" else 1)
    record = fit_run(resumed, split, run, **kwargs)
    assert int(resumed.optimizer.iterations.numpy()) == 9
    assert [r["epoch"] for r in _rows(run.log)] == ["0", "1", "2"]
    assert record["status"] == "finished" and record["resumed"] == [{"step": 6, "epoch": 2}]
    assert not os.path.exists(run.backup)
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_backup_files_are_atomic_and_a_damaged_backup_is_named(tiny_config, tmp_path):
    model = _tiny_model(tiny_config)
    backup = TrainingBackup(str(tmp_path / "backup"), steps_per_epoch=4)
    backup.set_model(model)
    backup.on_epoch_begin(0)
    backup.on_epoch_end(0)  # a backup of step 4 into the first slot
    backup.on_epoch_begin(1)
    backup.on_epoch_end(
        1
    )  # step 8 into the other slot: the first stays whole until the metadata moves
    files = sorted(os.listdir(tmp_path / "backup"))
    assert files == ["state-a.weights.h5", "state-b.weights.h5", "training_metadata.json"]
    assert TrainingBackup(str(tmp_path / "backup"), 4).restore(_tiny_model(tiny_config)) == 8
    with pytest.raises(ValueError, match="steps per epoch"):
        TrainingBackup(str(tmp_path / "backup"), 5).restore(model)
    (tmp_path / "backup" / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="training_metadata.json: not a readable training backup"):
        TrainingBackup(str(tmp_path / "backup"), 4).restore(model)


def test_an_interrupted_checkpoint_write_keeps_the_previous_one(tiny_config, tmp_path, monkeypatch):
    model = _tiny_model(tiny_config)
    saver = PeriodicCheckpoint(tmp_path, every=1, keep=2)
    saver.set_model(model)
    saver.on_epoch_end(0)
    before = (tmp_path / "epoch_001.keras").read_bytes()

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("killed while writing")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="killed"):
        saver.on_epoch_end(1)
    assert sorted(os.listdir(tmp_path)) == ["epoch_001.keras"]  # no partial file, no temporary left
    assert (tmp_path / "epoch_001.keras").read_bytes() == before
    monkeypatch.undo()
    for epoch in (1, 2, 3):
        saver.on_epoch_end(epoch)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch_003.keras",
        "epoch_004.keras",
    ]  # the last two kept


def test_epoch_log_keeps_each_epoch_once(tmp_path):
    path = tmp_path / "log.csv"
    log = EpochLog(path)
    log.set_model(keras.Sequential())  # no optimizer: no learning-rate column
    for epoch in range(3):
        log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    resumed = EpochLog(path, initial_epoch=2)  # epoch 2 is trained again after a resume
    resumed.set_model(keras.Sequential())
    resumed.on_epoch_end(2, {"loss": 0.25, "val_mAP": 0.5})
    rows = _rows(path)
    assert [(r["epoch"], r["loss"], r["val_mAP"]) for r in rows] == [
        ("0", "1", ""),
        ("1", "0.5", ""),
        ("2", "0.25", "0.5"),
    ]


def test_validation_map_equals_the_originals_loop(tiny_npz, tiny_config):
    split = _split(tiny_npz)
    train, x_val, y_val = hold_out_validation(split, 2)
    assert len(x_val) == 2 * len(np.unique(split.y_labeled)) and len(train.x_labeled) == 60 - len(
        x_val
    )
    model = _tiny_model(tiny_config)
    checker = RetrievalValidation(x_val, y_val, split.x_db, split.y_db, every=2, epochs=3)
    checker.set_model(model)
    logs = {}
    checker.on_epoch_end(0, logs)
    assert logs == {}  # not a validation epoch
    checker.on_epoch_end(1, logs)
    queries = intra_norm(model.encode(x_val), 3)  # consistent mode: Z' and intra-normalised queries
    similarity = original.label_similarity(y_val, split.y_db)
    want, codes, _ = original.original_map(
        model.refined_codebook, 3, model.encode(split.x_db), queries, similarity
    )
    assert logs["val_mAP"] == pytest.approx(want, abs=1e-6)
    hits = [
        similarity[i, order[:10]].sum() / 10
        for i, order in enumerate(
            np.argsort(
                original.pq_dist(model.refined_codebook, 3, codes, queries), 1, kind="stable"
            )
        )
    ]
    assert logs["val_precision@10"] == pytest.approx(np.mean(hits), abs=1e-9)
    assert logs["val_codeword_entropy"] == pytest.approx(codeword_entropy(codes, 4).mean())
    assert checker.best == logs["val_mAP"] and checker.best_epoch == 2


def test_codeword_entropy():
    codes = np.array([[0, 1], [1, 1], [2, 1], [3, 1]], np.uint8)
    np.testing.assert_allclose(
        codeword_entropy(codes, 4), [2.0, 0.0]
    )  # all used equally / collapsed


def test_hold_out_multi_hot_and_errors():
    x = np.zeros((6, 4, 4, 3), np.uint8)
    y = np.array([[1, 0], [1, 1], [0, 1], [1, 0], [0, 1], [0, 1]], np.uint8)
    split = Split(x_query=x[:1], y_query=y[:1], x_db=x, y_db=y, x_labeled=x, y_labeled=y)
    train, _, y_val = hold_out_validation(split, 1)
    np.testing.assert_array_equal(y_val, y[:1].tolist() + [[1, 1]])  # row 1 gives class 1 its image
    assert len(train.x_labeled) == 4
    with pytest.raises(ValueError, match="leaves none for training"):
        hold_out_validation(split, 5)


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got '0'"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints: expected a positive integer"),
        (["--overwrite", "--restart"], "not allowed with argument"),
        (["--bits", "32", "--n-word", "8"], "either --bits or --n-book/--n-word"),
    ],
)
def test_bad_train_arguments_are_one_line(tmp_path, capsys, argv, needle):
    line = _one_error_line(
        ["train", "--data", "digits", "--output", str(tmp_path / "r")] + argv, capsys
    )
    assert line.startswith("gpq train: error:") and needle in line
    assert not (tmp_path / "r").exists()


@pytest.mark.large
def test_finished_and_interrupted_runs_are_protected(tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        f"npz:{tiny_npz}",
        "--output",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--eval-every",
        "1",
    ] + TINY_ARGS
    assert cli.main(argv) == 0
    model_bytes = (out / "model.keras").read_bytes()
    line = _one_error_line(argv, capsys)
    assert "holds a finished run" in line and "--overwrite" in line
    assert (out / "model.keras").read_bytes() == model_bytes
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["validation"]["best"]["epoch"] == 1
    assert {"command", "config", "seed", "versions", "devices", "started", "finished"} <= set(
        record
    )
    assert (out / "best.keras").exists()
    tags = _tensorboard_tags(out / "logs")
    assert {"epoch_loss", "epoch_npq_loss", "epoch_learning_rate"} <= tags["train"]
    assert {"epoch_mAP", "epoch_precision@10", "epoch_codeword_entropy"} <= tags["validation"]
    assert {"codeword_entropy/codebook_00", "codeword_usage/codebook_02"} <= tags["codewords"]
    # an interrupted run: a backup and an unfinished record
    (out / "backup").mkdir()
    (out / "backup" / TrainingBackup.METADATA).write_text(
        '{"step": 1, "weights": "state-a.weights.h5"}'
    )
    record["status"] = "running"
    (out / "run.json").write_text(json.dumps(record))
    line = _one_error_line(
        argv[:-6] + ["--n-book", "2", "--n-word", "4", "--filters", "4,8,8,8"], capsys
    )
    assert "other settings (config)" in line and "--restart" in line
    (out / ".tmp-stale.keras").write_bytes(b"left by a kill")
    assert cli.main(argv + ["--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "removed the previous run" in printed and not (out / ".tmp-stale.keras").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def _tensorboard_tags(folder):
    """{sub-folder: the summary tags of its event files}."""
    import tensorflow as tf

    tags = {}
    for sub in os.listdir(folder):
        for name in os.listdir(folder / sub):
            for event in tf.compat.v1.train.summary_iterator(str(folder / sub / name)):
                tags.setdefault(sub, set()).update(value.tag for value in event.summary.value)
    return tags


def _train_process(out, data, epochs=6, pause=0.0):
    # Ctrl-C raises KeyboardInterrupt even when this test runs where SIGINT is ignored (a background
    # job, whose children, pytest-xdist's workers and this process, inherit that). `pause`: seconds
    # the run sleeps after each epoch's backup, so a signal sent on seeing a backup lands mid-run
    # however loaded the machine (a tiny epoch is milliseconds)
    code = (
        "import signal, sys, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from gpq_keras import cli\n"
        "cli.quiet_tensorflow()  # before TensorFlow is imported, as `cli.main` does\n"
        "from gpq_keras import training\n"
        f"PAUSE = {float(pause)!r}\n"
        "end = training.TrainingBackup.on_epoch_end\n"
        "def paced(self, epoch, logs=None):\n"
        "    end(self, epoch, logs)\n"
        "    time.sleep(PAUSE)\n"
        "training.TrainingBackup.on_epoch_end = paced\n"
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    argv = [
        "train",
        "--data",
        f"npz:{data}",
        "--output",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--eval-every",
        "3",
        "--save-every",
        "1",
        "--keep-checkpoints",
        "2",
    ] + TINY_ARGS
    return [sys.executable, "-c", code] + argv


@pytest.mark.large
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_or_interrupted_train_resumes_when_rerun(tiny_npz, tmp_path, how):
    out = tmp_path / "run"
    epochs = 16
    argv = _train_process(out, tiny_npz, epochs)
    # a pause after each backup: the signal lands mid-run however loaded the machine
    paced = _train_process(out, tiny_npz, epochs, pause=2.0)
    proc = subprocess.Popen(paced, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_backup(out, 2, proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "rerun the same command to resume" in lines[0], err
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    backup_epoch = json.loads((out / "backup" / TrainingBackup.METADATA).read_text())["epoch"]
    assert backup_epoch >= 2
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from the backup" in again.stdout
    assert (
        f"Epoch {backup_epoch + 1}/{epochs}" in again.stdout
        and f"Epoch {backup_epoch}/{epochs}" not in again.stdout
    )
    rows = _rows(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))  # each epoch once
    record = json.loads((out / "run.json").read_text())
    model = keras.models.load_model(out / "model.keras", safe_mode=True)
    assert record["steps_per_epoch"] == (60 - 10) // 4  # a validation image per class held out
    assert (
        int(model.optimizer.iterations) == epochs * record["steps_per_epoch"]
    )  # epochs x steps per epoch
    assert sorted(os.listdir(out / "checkpoints")) == [
        f"epoch_{epochs - 1:03d}.keras",
        f"epoch_{epochs:03d}.keras",
    ]
    assert not (out / "backup").exists()
    assert record["status"] == "finished" and record["resumed"][0]["epoch"] == backup_epoch


@pytest.mark.large
def test_one_xla_step_equals_one_plain_step(tiny_config):
    batch = (
        {
            "labeled": np.random.default_rng(1).normal(size=(8, 16, 16, 3)).astype(np.float32),
            "unlabeled": np.random.default_rng(2).normal(size=(8, 16, 16, 3)).astype(np.float32),
        },
        np.arange(8) % 5,
    )
    plain, xla = GPQ(tiny_config), GPQ(tiny_config)
    xla.set_weights(plain.get_weights())
    # SGD: an update proportional to the gradient (Adam's first step is lr * sign(g), which flips
    # for gradients at rounding level, e.g. the ones batch norm cancels).
    plain.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    xla.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    want = plain.train_on_batch(*batch, return_dict=True)
    got = xla.train_on_batch(*batch, return_dict=True)
    assert xla.jit_compile and not plain.jit_compile
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    for a, b in zip(xla.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.large
def test_a_run_folder_is_locked_while_a_run_trains(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.lock():
        code = (
            "import sys\nfrom gpq_keras.training import RunDirectory\ntry:\n"
            f"    with RunDirectory({str(tmp_path / 'run')!r}).lock():\n        print('got it')\n"
            "except ValueError as exc:\n    print(exc)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert "another gpq train is running in this folder" in result.stdout, (
            result.stdout + result.stderr
        )
    with run.lock():  # released
        pass
