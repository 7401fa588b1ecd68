"""Every bad input of the command line gets one clear line and exit status 2, and no existing file
changes.

The cases of the "nothing lost, nothing silent" review, through `gpq_keras.cli.main` as a user runs
them.
"""

import hashlib
import os
import stat

import numpy as np
import pytest
from data_fakes import save_split

from gpq_keras import GPQ, cli
from gpq_keras.config import GPQConfig

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

CONFIG = GPQConfig(
    num_subspaces=3,
    num_codewords=4,
    subspace_dim=4,
    num_classes=5,
    image_shape=(16, 16, 3),
    filters=(4, 8, 8, 8),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny npz data set, two different models A and B, and an index built with A."""
    root = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(60) % 5
    data = root / "data.npz"
    save_split(data, images, labels, 10, 30)
    for name, seed in (("a", 0), ("b", 1)):
        import keras

        keras.utils.set_random_seed(seed)
        GPQ(CONFIG).save(root / f"{name}.keras")
    assert (
        cli.main(
            [
                "index",
                "build",
                "--model",
                str(root / "a.keras"),
                "--data",
                f"npz:{data}",
                "--output",
                str(root / "index.npz"),
            ]
        )
        == 0
    )
    return root


def _digest(folder):
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(folder))
        if (folder / name).is_file()
    }


def _fails_with_one_line(argv, capsys, needle):
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # usage errors come from argparse
        status = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, (argv, err)
    assert len(err) == 1 and needle in err[0], err
    return err[0]


@pytest.mark.parametrize(
    "case",
    [
        "encode over the model",
        "index over the model",
        "json over the model",
        "index over the data",
        "figure over the json",
        "output linked to the model",
    ],
)
def test_an_output_never_replaces_an_input(files, capsys, case):
    model, data = files / "a.keras", files / "data.npz"
    spec = f"npz:{data}"
    if case == "output linked to the model":
        link = files / "link.keras"
        if not link.exists():
            os.symlink(model, link)
    argv, needle = {
        "encode over the model": (
            ["encode", "--model", str(model), "--data", spec, "--output", str(model)],
            "--output",
        ),
        "index over the model": (
            ["index", "build", "--model", str(model), "--data", spec, "--output", str(model)],
            "is the input --model",
        ),
        "json over the model": (
            ["evaluate", "--model", str(model), "--data", spec, "--json", str(model)],
            "--json",
        ),
        "index over the data": (
            ["index", "build", "--model", str(model), "--data", spec, "--output", str(data)],
            "is the input --data",
        ),
        "figure over the json": (
            [
                "evaluate",
                "--model",
                str(model),
                "--data",
                spec,
                "--json",
                str(files / "r.json"),
                "--figure",
                str(files / "r.json"),
            ],
            "are the same file",
        ),
        "output linked to the model": (
            [
                "encode",
                "--model",
                str(model),
                "--data",
                spec,
                "--output",
                str(files / "link.keras"),
            ],
            "refusing to overwrite an input",
        ),
    }[case]
    before = _digest(files)
    _fails_with_one_line(argv, capsys, needle)
    assert _digest(files) == before


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["train", "--data", "digits", "--output", "r", "--n-book", "0"],
            "--n-book: expected a positive integer",
        ),
        (
            ["train", "--data", "digits", "--output", "r", "--n-word", "0"],
            "--n-word: expected a positive integer",
        ),
        (
            ["train", "--data", "digits", "--output", "r", "--save-every", "-1"],
            "--save-every: expected an integer >= 0",
        ),
        (
            ["evaluate", "--model", "m.keras", "--data", "digits", "--top-k", "0"],
            "--top-k: expected a positive",
        ),
        (
            [
                "index",
                "search",
                "--model",
                "m.keras",
                "--index",
                "i.npz",
                "--data",
                "digits",
                "-k",
                "0",
            ],
            "-k: expected a positive integer",
        ),
    ],
)
def test_out_of_range_numbers_are_refused_at_parse_time(capsys, argv, needle):
    line = _fails_with_one_line(argv, capsys, needle)
    assert line.startswith(f"gpq {argv[0]}")


def test_a_query_out_of_range_is_refused_before_any_work(files, capsys):
    report = files / "q.json"
    _fails_with_one_line(
        [
            "evaluate",
            "--model",
            str(files / "a.keras"),
            "--data",
            f"npz:{files / 'data.npz'}",
            "--json",
            str(report),
            "--figure",
            str(files / "q.png"),
            "--query",
            "9999",
        ],
        capsys,
        "--query 9999 is out of range (0..9)",
    )
    assert not report.exists()


def test_k_beyond_the_index_and_another_model_are_refused(files, capsys):
    spec, index = f"npz:{files / 'data.npz'}", str(files / "index.npz")
    _fails_with_one_line(
        [
            "index",
            "search",
            "--model",
            str(files / "a.keras"),
            "--index",
            index,
            "--data",
            spec,
            "-k",
            "20000",
        ],
        capsys,
        "-k 20000 exceeds the 30 items",
    )
    _fails_with_one_line(
        ["index", "search", "--model", str(files / "b.keras"), "--index", index, "--data", spec],
        capsys,
        "the index was built with another model",
    )
    assert (
        cli.main(
            [
                "index",
                "search",
                "--model",
                str(files / "a.keras"),
                "--index",
                index,
                "--data",
                spec,
                "-k",
                "30",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "damage", ["truncated npz", "not a .keras", "truncated .keras", "tampered index"]
)
def test_damaged_files_are_one_line(files, tmp_path, capsys, damage):
    spec, model = f"npz:{files / 'data.npz'}", str(files / "a.keras")
    if damage == "truncated npz":
        bad = tmp_path / "cut.npz"
        bad.write_bytes((files / "data.npz").read_bytes()[:500])
        argv, needle = (
            [
                "encode",
                "--model",
                model,
                "--data",
                f"npz:{bad}",
                "--output",
                str(tmp_path / "o.npz"),
            ],
            "cut.npz: not a readable .npz",
        )
    elif damage in ("not a .keras", "truncated .keras"):
        bad = tmp_path / "m.keras"
        content = (files / "a.keras").read_bytes()
        bad.write_bytes(b"hello" if damage == "not a .keras" else content[: len(content) // 2])
        argv, needle = (
            ["evaluate", "--model", str(bad), "--data", spec],
            "m.keras: not a loadable GPQ model",
        )
    else:
        bad = tmp_path / "i.npz"
        with np.load(files / "index.npz") as data:
            arrays = {k: data[k] for k in data.files}
        arrays["ids"] = arrays["ids"].copy()
        arrays["ids"][3] = -1
        np.savez(bad, **arrays)  # the checksum no longer matches
        argv, needle = (
            ["index", "search", "--model", model, "--index", str(bad), "--data", spec],
            "checksum does not match",
        )
    line = _fails_with_one_line(argv, capsys, needle)
    assert "File not found" not in line


def test_a_run_folder_with_a_linked_sub_folder_is_refused(files, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "logs")
    _fails_with_one_line(
        [
            "train",
            "--data",
            f"npz:{files / 'data.npz'}",
            "--output",
            str(run),
            "--epochs",
            "1",
            "--n-book",
            "3",
            "--n-word",
            "4",
            "--filters",
            "4,8,8,8",
        ],
        capsys,
        "logs is a symbolic link",
    )
    assert os.listdir(outside) == []


def test_a_one_class_training_set_is_refused(tmp_path, capsys):
    images = np.zeros((12, 16, 16, 3), np.uint8)
    data = tmp_path / "one.npz"
    np.savez(
        data,
        x_query=images[:2],
        y_query=np.zeros(2, int),
        x_db=images[2:6],
        y_db=np.zeros(4, int),
        x_labeled=images[6:],
        y_labeled=np.zeros(6, int),
    )
    _fails_with_one_line(
        [
            "train",
            "--data",
            f"npz:{data}",
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--val-per-class",
            "0",
        ],
        capsys,
        "at least 2 classes",
    )


def test_outputs_get_the_usual_permissions(files, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "codes.npz"
        assert (
            cli.main(
                [
                    "encode",
                    "--model",
                    str(files / "a.keras"),
                    "--data",
                    f"npz:{files / 'data.npz'}",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


def test_an_init_model_of_another_configuration_is_refused(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        f"npz:{files / 'data.npz'}",
        "--output",
        str(out),
        "--epochs",
        "1",
        "--n-book",
        "3",
        "--n-word",
        "4",
        "--filters",
        "4,8,8,8",
        "--init-model",
        str(files / "a.keras"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpq train: error: --init-model") and "another configuration" in err
    assert "subspace_dim" in err and len(err.splitlines()) == 1
    assert not (out / "model.keras").exists()
