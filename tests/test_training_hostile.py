"""`gpq train` against a hostile user (issue 22): --overwrite / --restart check every input before
the previous run moves aside, a damaged run.json, numbers that cannot train, a diverging loss, the
run folder's lock, the path guard and the image reader's flags. Tiny data (16x16 images), a tiny
model (M=3, K=4, filters 4,8,8,8) and one epoch."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from data_fakes import save_split

from gpq_keras import cli
from gpq_keras.model import load_gpq

TINY = ["--n-book", "3", "--n-word", "4", "--filters", "4,8,8,8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16x16 noise in 5 classes: 10 queries, 20 database (= unlabeled) and 30 labeled images."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    y = np.arange(60) % 5
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_split(path, x, y, 10, 20)
    return path


def _argv(data, out, *more):
    """One epoch of 2 steps (25 labeled images at batch 10; a validation image per class, so a
    best.keras) and a periodic checkpoint."""
    return [
        "train",
        "--data",
        f"npz:{data}",
        "--output",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--val-per-class",
        "1",
        "--eval-every",
        "1",
        "--save-every",
        "1",
        *TINY,
        *more,
    ]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run folder (copied by `_finished_copy` for each test)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(_argv(data, out)) == 0
    return out


def _finished_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    return out


def _digest(folder):
    """{relative path: SHA-256} of every file under `folder` (the lock file aside), folders as
    None."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                found[os.path.relpath(path, folder)] = hashlib.sha256(
                    open(path, "rb").read()
                ).hexdigest()
    return found


def _fails(argv, capsys, needle, status=2):
    """Run `gpq argv`: exit `status` and one stderr line containing `needle` -> the line."""
    try:
        got = cli.main(argv)
    except SystemExit as exc:  # a usage error, from argparse
        got = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert got == status, (got, captured.err)
    assert len(err) == 1, err
    assert err[0].startswith("gpq train:") and needle in err[0], err[0]
    return err[0]


def _finite_model(path):
    return all(np.isfinite(w).all() for w in load_gpq(path).get_weights())


# --- --overwrite / --restart: every input first ---------------------------------------------------


@pytest.mark.large
@pytest.mark.parametrize("flag", ["--init-model", "--imagenet-mat"])
def test_overwrite_with_a_bad_input_keeps_the_finished_run(data, finished, tmp_path, capsys, flag):
    """Issue 22, failure 1: `--overwrite --init-model damaged.keras` (or `--imagenet-mat` of a
    missing file) removed model.keras, run.json, log.csv and logs/, then failed."""
    out = _finished_copy(finished, tmp_path)
    if flag == "--init-model":
        bad = tmp_path / "damaged.keras"
        bad.write_bytes(b"PK\x03\x04" + bytes(200))
    else:
        bad = tmp_path / "nonexistent.mat"
    before = _digest(out)
    _fails(_argv(data, out, "--overwrite", flag, str(bad)), capsys, bad.name)
    assert _digest(out) == before


@pytest.mark.large
@pytest.mark.parametrize("flag", ["--restart", "--overwrite"])
def test_a_damaged_run_record_does_not_block_starting_over(data, finished, tmp_path, capsys, flag):
    out = _finished_copy(finished, tmp_path)
    (out / "run.json").write_text('{"status": "fini')
    assert cli.main(_argv(data, out, flag)) == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert _finite_model(out / "model.keras")
    assert not [name for name in os.listdir(out) if name.startswith(".previous-")]


def test_a_damaged_run_record_is_refused_naming_it(data, finished, tmp_path, capsys):
    out = _finished_copy(finished, tmp_path)
    (out / "run.json").write_text("{not json")
    before = _digest(out)
    line = _fails(_argv(data, out), capsys, "run.json: not a readable run record")
    assert str(out / "run.json") in line and "--restart" in line
    assert _digest(out) == before


@pytest.mark.large
def test_overwrite_replaces_the_run_and_leaves_nothing_aside(data, finished, tmp_path, capsys):
    out = _finished_copy(finished, tmp_path)
    old_model = (out / "model.keras").read_bytes()
    assert cli.main(_argv(data, out, "--overwrite", "--seed", "1")) == 0
    printed = capsys.readouterr().out
    assert "set the previous run" in printed and "removed the previous run" in printed
    assert (out / "model.keras").read_bytes() != old_model
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_001.keras"]
    assert not [name for name in os.listdir(out) if name.startswith(".previous-")]
    assert json.loads((out / "run.json").read_text())["settings"]["seed"] == 1


@pytest.mark.large
def test_ctrl_c_before_the_first_backup_puts_the_previous_run_back(
    data, finished, tmp_path, capsys, monkeypatch
):
    out = _finished_copy(finished, tmp_path)
    before = _digest(out)

    def interrupted_fit(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", interrupted_fit)
    _fails(_argv(data, out, "--overwrite"), capsys, "interrupted before the first backup", 130)
    assert _digest(out) == before


@pytest.mark.large
def test_inputs_inside_the_run_folder_are_refused_before_anything_changes(
    data, finished, tmp_path, capsys
):
    """The run would overwrite (or --overwrite set aside) its own input."""
    out = _finished_copy(finished, tmp_path)
    before = _digest(out)
    for init in (out / "model.keras", out / "checkpoints" / "epoch_001.keras"):
        line = _fails(_argv(data, out, "--overwrite", "--init-model", str(init)), capsys, "input")
        assert "--init-model" in line and "refusing to" in line
        assert _digest(out) == before


def test_an_output_that_is_a_file_is_refused_in_plain_words(data, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _fails(_argv(data, afile), capsys, "is a file, not a directory")
    _fails(_argv(data, afile / "run"), capsys, "is a file, not a folder")
    assert afile.read_text() == "mine"


# --- numbers that cannot train --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "1e400", "fast"])
def test_a_learning_rate_that_cannot_train_is_refused_at_once(data, tmp_path, capsys, value):
    """Issue 22, failure 9: `--learning-rate inf` trained a model of NaN weights, marked the run
    finished and exited 0."""
    _fails(
        _argv(data, tmp_path / "r", "--learning-rate", value),
        capsys,
        f"--learning-rate: expected a finite number > 0, got {value!r}",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["a,b", "", "16,32", "4,8,8,0", "4,8,8,8,8", "4.5,8,8,8"])
def test_filters_that_are_not_four_positive_integers_are_refused(data, tmp_path, capsys, value):
    """`--filters a,b` gave a bare int() error; `--filters ''` trained the full-size model."""
    _fails(
        _argv(data, tmp_path / "r", "--filters", value),
        capsys,
        "--filters: expected 4 comma-separated positive integers such as 16,32,64,64, "
        f"got {value!r}",
    )
    assert not (tmp_path / "r").exists()


# --- a diverging run ------------------------------------------------------------------------------

DIVERGED = (
    r"gpq train: error: the (loss|weights) became (NaN|infinite).* at epoch 1, step \d+; "
    r"nothing was saved over .*model\.keras; lower --learning-rate$"
)


@pytest.mark.large
def test_a_diverging_new_run_stops_with_one_line_and_saves_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    line = _fails(_argv(data, out, "--learning-rate", "1e30"), capsys, "lower --learning-rate")
    assert re.match(DIVERGED, line), line
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "diverged" and record["diverged"]["epoch"] == 1
    assert not (out / "model.keras").exists() and not (out / "best.keras").exists()
    assert not (out / "checkpoints").exists() or not os.listdir(out / "checkpoints")


@pytest.mark.large
def test_a_diverging_overwrite_keeps_the_finished_run(data, finished, tmp_path, capsys):
    out = _finished_copy(finished, tmp_path)
    before = _digest(out)
    line = _fails(
        _argv(data, out, "--overwrite", "--learning-rate", "1e30"), capsys, "nothing was saved"
    )
    assert str(out / "model.keras") in line
    assert _digest(out) == before  # model.keras, best.keras, run.json... as they were
    assert _finite_model(out / "model.keras") and _finite_model(out / "best.keras")


class _PoisonWeights(keras.callbacks.Callback):
    """Sets the weight `name` to NaN at the end of global step `at` (after the run's own callbacks
    of that step: its backup is of finite weights)."""

    def __init__(self, at, name):
        super().__init__()
        self.at, self.name, self.seen = at, name, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            (weight,) = [w for w in self.model.weights if w.path == self.name]
            weight.assign(np.full(weight.shape, np.nan, weight.dtype))


@pytest.mark.large
@pytest.mark.parametrize(
    "at, name, epoch, what",
    [
        (3, "feature_vector/kernel", 2, "the loss became NaN at epoch 2, step 4"),
        (
            2,
            "conv0/kernel",
            1,
            "weights became NaN or infinite (1 of 54 tensors, conv0/kernel first)",
        ),
    ],
)
def test_fit_run_stops_at_a_nan_and_never_saves_nan_weights(
    data, tiny_config, tmp_path, at, name, epoch, what
):
    """NaN weights after step `at`. The feature layer's kernel at step 3, mid-epoch 2: step 4's
    loss is NaN. The first conv kernel at step 2, the last of epoch 1: the loss stays finite (the
    backbone's NaNs do not reach it), but validation finds the weights NaN. Either way fit_run
    raises `Diverged`, run.json says "diverged", best.keras is epoch 1's (finite) or absent, the
    backup is the last finite state, and there is no model.keras."""
    from gpq_keras.data import load_data
    from gpq_keras.data.split import hold_out_validation
    from gpq_keras.model import GPQ
    from gpq_keras.training import Diverged, RunDirectory, TrainingBackup, fit_run

    split, x_val, y_val = hold_out_validation(load_data(f"npz:{data}"), 1)
    model = GPQ(tiny_config)
    model.compile()
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(Diverged, match=re.escape(what)) as info:
        fit_run(
            model,
            split,
            run,
            epochs=3,
            batch_size=10,
            seed=0,
            validation=(x_val, y_val),
            eval_every=1,
            backup_every_steps=1,
            save_every=1,
            callbacks=[_PoisonWeights(at, name)],
            verbose=0,
        )
    assert info.value.epoch == epoch and str(run.model) in str(info.value)
    assert info.value.step == (at + 1 if epoch == 2 else at)
    record = run.read_record()
    assert record["status"] == "diverged" and record["diverged"]["epoch"] == epoch
    assert not os.path.exists(run.model)
    assert os.path.exists(run.best) == (epoch == 2)
    if epoch == 2:
        assert _finite_model(run.best)
        assert sorted(os.listdir(run.checkpoints)) == ["epoch_001.keras"]
    fresh = GPQ(tiny_config)
    fresh.compile()
    assert TrainingBackup(run.backup, 2).restore(fresh) == at  # the last finite state
    assert all(np.isfinite(w).all() for w in fresh.get_weights())


# --- the lock, temporaries, the image reader ------------------------------------------------------


@pytest.mark.large
def test_a_run_locked_by_another_process_gives_one_line(data, tmp_path):
    """The run folder's lock is a `filelock` lock on DIR/.lock: another process holding it (here
    this one, through filelock itself) makes `gpq train` refuse at once, in one line."""
    import filelock

    out = tmp_path / "run"
    out.mkdir()
    code = "import sys\nfrom gpq_keras import cli\nsys.exit(cli.main(sys.argv[1:]))"
    with filelock.FileLock(str(out / ".lock"), timeout=0):
        result = subprocess.run(
            [sys.executable, "-c", code, *_argv(data, out)],
            capture_output=True,
            text=True,
            timeout=240,
        )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "another gpq train is running in this folder" in lines[0]
    assert sorted(os.listdir(out)) == [".lock"]


@pytest.mark.large
def test_temporaries_of_killed_writers_are_swept(data, finished, tmp_path):
    out = _finished_copy(finished, tmp_path)
    code = (
        "import os, sys\nfrom gpq_keras.files import atomic_path\n"
        "for path in sys.argv[1:]:\n    open(atomic_path(path).__enter__(), 'w').write('half')\n"
        "os.kill(os.getpid(), 9)"
    )
    targets = [out / "model.keras", out / "checkpoints" / "epoch_001.keras"]
    killed = subprocess.run([sys.executable, "-c", code, *map(str, targets)], timeout=120)
    assert killed.returncode == -9
    left = [p for p in (out, out / "checkpoints") for n in os.listdir(p) if n.startswith(".tmp-")]
    assert len(left) == 2
    assert cli.main(_argv(data, out, "--overwrite")) == 0
    for folder in (out, out / "checkpoints"):
        assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def _image_folder(root):
    """3 classes of 10 16x16 PNG images each."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.large
def test_train_reads_image_folders_with_the_reader_flags(tmp_path, capsys):
    images = _image_folder(tmp_path / "images")
    (images / "class0" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        f"folder:{images}",
        "--output",
        str(out),
        "--epochs",
        "1",
        "--val-per-class",
        "0",
        *TINY,
    ]
    _fails(argv + ["--max-pixels", "100"], capsys, "exceed --max-pixels 100")
    _fails(argv, capsys, "broken.png")
    assert not (out / "model.keras").exists()
    assert cli.main(argv + ["--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 unreadable file skipped (--skip-unreadable)" in err
    assert _finite_model(out / "model.keras")
