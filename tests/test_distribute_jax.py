"""`--strategy data-parallel`: Keras' `DataParallel` on JAX trains as one device on the whole batch.

JAX fixes its devices when it starts, so each JAX case runs in a fresh process, this file being its
worker (`python test_distribute_jax.py CASE OUT`), with `XLA_FLAGS` splitting the CPU into two host
devices or not; this process (TensorFlow, conftest.py) compares what they write.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HALF = 8  # images per device and stream on 2 devices; the global batch is 2 * HALF
LOSSES = ("loss", "npq_loss", "cls_loss", "entropy_loss")

pytestmark = pytest.mark.large


def jax_process(args, cwd, devices):
    """Run `python args...` on JAX over `devices` host CPU devices -> its stdout."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def relative_error(a, b):
    """||a - b|| / ||a||."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


# --- the worker (a JAX process) -------------------------------------------------------------------


def global_batch():
    """16 + 16 images and labels; the second device's half is brighter, so batch norm over one
    half would differ from batch norm over the whole."""
    rng = np.random.default_rng(0)
    shift = np.repeat([0.0, 60.0], HALF)[:, None, None, None]
    labeled = (100.0 + 50.0 * rng.standard_normal((2 * HALF, 16, 16, 3)) + shift).astype("float32")
    unlabeled = (150.0 + 70.0 * rng.standard_normal((2 * HALF, 16, 16, 3)) - shift).astype(
        "float32"
    )
    return labeled, unlabeled, rng.integers(0, 5, 2 * HALF)


def one_step(out):
    """One `fit` step on the global batch under `make_strategy("data-parallel")` (on one device:
    no strategy) -> OUT.npz of the weights before and after, the losses, the devices each weight
    lives on, the batch's rows per device, the replicas, and the errors of tf.distribute's names."""
    import jax
    import keras

    from gpq_keras import GPQ, GPQConfig
    from gpq_keras.distribute import LOCAL, make_strategy, strategy_of

    config = GPQConfig(
        num_subspaces=3,
        num_codewords=4,
        subspace_dim=4,
        num_classes=5,
        image_shape=(16, 16, 3),
        filters=(4, 8, 8, 8),
    )
    strategy = make_strategy("data-parallel") if jax.device_count() > 1 else LOCAL
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = GPQ(config)
        model.compile()
    start = [keras.ops.convert_to_numpy(w) for w in model.weights]
    labeled, unlabeled, labels = global_batch()
    rows, step = [], model.train_step

    def spy(state, data):  # the labeled images' rows on each device, as the compiled step has them
        jax.debug.inspect_array_sharding(
            data[0]["labeled"], callback=lambda s: rows.append(s.shard_shape(labeled.shape)[0])
        )
        return step(state, data)

    model.train_step = spy
    history = model.fit(
        {"labeled": labeled, "unlabeled": unlabeled},
        labels,
        batch_size=2 * HALF,
        epochs=1,
        shuffle=False,
        verbose=0,
    ).history
    errors = []
    for name in ("mirrored", "multi-worker"):
        try:
            make_strategy(name)
        except ValueError as exc:
            errors.append(str(exc))
    np.savez(
        out,
        **{f"start/{w.path}": v for w, v in zip(model.weights, start)},
        **{f"after/{w.path}": keras.ops.convert_to_numpy(w) for w in model.weights},
        **{f"loss/{name}": np.float64(values[0]) for name, values in history.items()},
        devices=np.array([len(w.value.sharding.device_set) for w in model.weights]),
        replicas=np.int64(strategy_of(model).num_replicas_in_sync),
        rows=np.array(rows),
        features=model.predict(labeled[:7], verbose=0),  # 7 images: not split over 2 devices
        errors=np.array(errors),
    )


def train(data, out):
    """`gpq train --strategy one`, then `--strategy data-parallel` (which sets Keras' distribution
    for the rest of the process), on `data` -> OUT/one, OUT/data-parallel, stdout of each; then
    `gpq evaluate --strategy data-parallel` of both models -> their eval.json."""
    from gpq_keras import cli

    def argv(strategy, output, *more):
        return [
            "train",
            "--data",
            f"npz:{data}",
            "--output",
            os.path.join(out, output),
            "--strategy",
            strategy,
            *"--epochs 2 --batch-size 20 --n-book 3 --n-word 4 --filters 4,8,8,8".split(),
            *"--eval-every 1 --seed 0 --pipeline numpy".split(),
            *more,
        ]

    for strategy in ("one", "data-parallel"):
        print(f"=== {strategy}", flush=True)
        assert cli.main(argv(strategy, strategy)) == 0, strategy
    assert cli.main(argv("data-parallel", "sync", "--sync-batch-norm")) == 2  # tf.distribute's
    for run in ("one", "data-parallel"):  # encoded under the distribution: 20 queries, 60 images
        evaluate = ["evaluate", "--model", os.path.join(out, run, "model.keras")]
        json_file = os.path.join(out, run, "eval.json")
        rest = ["--data", f"npz:{data}", "--strategy", "data-parallel", "--json", json_file]
        assert cli.main([*evaluate, *rest]) == 0, run


# --- the tests (this process: TensorFlow) ---------------------------------------------------------


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """{devices: the one-step worker's OUT.npz} for 1 and 2 host devices."""
    root = tmp_path_factory.mktemp("one_step")
    found = {}
    for devices in (1, 2):
        out = root / f"{devices}.npz"
        jax_process([__file__, "one-step", out], root, devices)
        found[devices] = dict(np.load(out))
    return found


def test_one_step_on_two_devices_equals_one_step_on_one_with_the_same_global_batch(steps):
    """The same seed gives the same start; after one step the losses (1e-5) and every weight,
    Adam's update and batch norm's moving statistics included (1e-5 relative), are those of one
    device on the 16 + 16 images: the N-pair loss and batch norm saw the whole batch."""
    one, two = steps[1], steps[2]
    assert int(two["replicas"]) == 2 and int(one["replicas"]) == 1
    assert set(two["devices"]) == {2} and set(one["devices"]) == {1}  # every weight on both
    assert list(two["rows"]) == [HALF] and list(one["rows"]) == [2 * HALF]  # the batch split
    names = [key[len("after/") :] for key in one if key.startswith("after/")]
    assert names and sorted(names) == sorted(
        k[len("after/") :] for k in two if k.startswith("after/")
    )
    for name in names:
        np.testing.assert_array_equal(two[f"start/{name}"], one[f"start/{name}"])
    for name in LOSSES:
        assert float(two[f"loss/{name}"]) == pytest.approx(float(one[f"loss/{name}"]), rel=1e-5)
    worst = max(relative_error(one[f"after/{n}"], two[f"after/{n}"]) for n in names)
    assert worst <= 1e-5, worst
    moved = [n for n in names if relative_error(one[f"start/{n}"], one[f"after/{n}"]) > 1e-4]
    assert any("moving_variance" in n for n in moved) and any("kernel" in n for n in moved)
    np.testing.assert_allclose(two["features"], one["features"], rtol=1e-4, atol=1e-5)


def test_the_other_backends_strategy_names_are_errors_naming_the_one_to_use(steps):
    """On JAX mirrored and multi-worker name data-parallel; on TensorFlow data-parallel names
    mirrored."""
    from gpq_keras.distribute import make_strategy

    errors = list(steps[2]["errors"])
    assert len(errors) == 2 and all("--strategy data-parallel" in e for e in errors)
    with pytest.raises(ValueError, match="use --strategy mirrored"):
        make_strategy("data-parallel")


def test_data_parallel_on_tensorflow_is_one_line_naming_mirrored(tmp_path, capsys):
    from gpq_keras import cli

    argv = ["train", "--data", "digits", "--output", str(tmp_path / "r")]
    assert cli.main([*argv, "--strategy", "data-parallel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strategy mirrored" in err[0] and "KERAS_BACKEND=jax" in err[0]
    assert not (tmp_path / "r").exists()


def test_every_strategy_name_is_a_choice_of_the_flag():
    from gpq_keras.cli.common import STRATEGY_NAMES
    from gpq_keras.distribute import NAMES

    assert STRATEGY_NAMES == NAMES and "data-parallel" in NAMES


def _log(run):
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def test_gpq_train_data_parallel_on_two_devices_trains_as_one_device(tmp_path):
    """`gpq train --strategy data-parallel` on 2 host devices runs end to end (its validation
    batches do not split over 2) and gives the log and weights of `--strategy one`; `gpq evaluate
    --strategy data-parallel` encodes its model."""
    from data_fakes import save_split

    from gpq_keras.data import digits
    from gpq_keras.model import load_gpq

    images, labels = digits.load_images(16)
    pick = np.random.default_rng(0).permutation(len(images))[:140]
    data = save_split(tmp_path / "tiny.npz", images[pick], labels[pick], 20, 60)
    stdout = jax_process([__file__, "train", data, tmp_path], tmp_path, 2)
    assert "2 replicas, batch norm over the global batch" in stdout.split("=== data-parallel")[1]
    runs = {}
    for strategy in ("one", "data-parallel"):
        with open(tmp_path / strategy / "run.json") as fh:
            record = json.load(fh)
        assert record["status"] == "finished" and record["backend"] == "jax"
        runs[strategy] = (
            record,
            _log(tmp_path / strategy),
            load_gpq(tmp_path / strategy / "model.keras"),
        )
    (one, one_log, one_model), (two, two_log, two_model) = runs["one"], runs["data-parallel"]
    assert (one["strategy"], one["replicas"]) == ("LocalDevice", 1)
    assert (two["strategy"], two["replicas"]) == ("JAXDataParallel", 2)
    assert len(one_log) == len(two_log) == 2 and one_log[0]["loss"] != one_log[1]["loss"]
    for a, b in zip(one_log, two_log):
        for name in (*LOSSES, "val_mAP"):
            assert float(b[name]) == pytest.approx(float(a[name]), rel=1e-4, abs=1e-5), name
    maps = []
    for strategy in ("one", "data-parallel"):
        with open(tmp_path / strategy / "eval.json") as fh:
            maps.append(json.load(fh)["mAP"])
    assert 0.0 < maps[0] <= 1.0 and maps[1] == pytest.approx(maps[0], abs=1e-4)
    worst = max(
        relative_error(a, b) for a, b in zip(one_model.get_weights(), two_model.get_weights())
    )
    assert worst <= 1e-4, worst


if __name__ == "__main__":
    case, *rest = sys.argv[1:]
    {"one-step": one_step, "train": train}[case](*rest)
