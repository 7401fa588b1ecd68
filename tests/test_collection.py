"""Your own semi-supervised collection through the command line: class folders plus an unlabeled
pool (`--unlabeled`), the parts a run trains on (run.json, split.npz), `gpq data check`,
`evaluate --split`, the protocols' flags, and a killed streamed run that resumes to the weights of
an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from run_helpers import wait_for_backup

from gpq_keras import cli
from gpq_keras.data import load_data, train_input
from gpq_keras.model import load_gpq  # safe mode

pytestmark = pytest.mark.large  # end to end through the CLI (TensorFlow models): in `make test`

TINY = ["--n-book", "3", "--n-word", "4", "--filters", "4,4,4,4", "--image-size", "16"]
CLASSES = {"blue": (30, 40, 210), "green": (30, 200, 40), "red": (220, 30, 30)}
POOL_COLOUR = (250, 250, 250)  # the pool's images are white: no labeled image is


def _write(path, colour, rng, size=None):
    height, width = size or rng.integers(12, 40, 2)
    pixels = np.clip(np.array(colour) + rng.normal(0, 4, (height, width, 3)), 0, 255)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """labeled/{blue,green,red}/ with 8 PNGs each (any size); pool/ 20 white PNGs at any depth."""
    root = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(0)
    for name, colour in CLASSES.items():
        for i in range(8):
            _write(str(root / "labeled" / name / f"{name}_{i}.png"), colour, rng)
    for i in range(20):
        _write(str(root / "pool" / f"d{i % 3}" / f"e{i % 2}" / f"u{i}.png"), POOL_COLOUR, rng)
    return root


def _copy_labeled(collection, target, per_class=None):
    """A copy of the collection's labeled folder (the first `per_class` images of each class)
    that a test may change -> its path."""
    for name in CLASSES:
        os.makedirs(target / name)
        for path in sorted((collection / "labeled" / name).iterdir())[:per_class]:
            (target / name / path.name).write_bytes(path.read_bytes())
    return target


def _train(out, data, *extra, epochs=1):
    argv = ["train", "--data", data, "--output", str(out), "--epochs", str(epochs)]
    return cli.main(argv + ["--batch-size", "4", *TINY, *extra])


def test_every_labeled_image_trains_and_the_pool_feeds_the_unlabeled_stream(
    collection, tmp_path, capsys
):
    out = tmp_path / "run"
    data = f"folder:{collection / 'labeled'}"
    assert _train(out, data, "--unlabeled", str(collection / "pool")) == 0
    banner = capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    # a tenth of the smallest class, at least one, per class held out as queries = validation
    assert record["split"]["parts"] == {
        "query": 3,
        "labeled": 21,
        "unlabeled": 20,
        "database": 21,
        "validation": 3,
    }
    assert record["split"]["protocol"] == "given" and record["split"]["seed"] == 0
    assert "21 labeled, 20 unlabeled, 3 validation" in banner and "16x16" in banner
    stored = np.load(out / "split.npz")
    pool = {str(p) for p in (collection / "pool").rglob("*.png")}
    assert set(stored["unlabeled_paths"]) == pool
    labeled = set(stored["labeled_paths"])
    assert len(labeled) == 21 and not labeled & pool
    assert not labeled & set(stored["query_paths"])
    assert set(stored["validation_paths"]) == set(stored["query_paths"])
    model = load_gpq(out / "model.keras")
    assert model.gpq_config.image_shape == (16, 16, 3)


def test_the_unlabeled_stream_draws_from_the_pool_only(collection):
    split = load_data(
        f"folder:{collection / 'labeled'}", unlabeled=str(collection / "pool"), image_size=16
    )
    dataset, _ = train_input(split, batch_size=5, seed=3, augmented=False, pipeline="tf.data")
    for batch, (images, _) in zip(range(6), dataset):
        unlabeled = images["unlabeled"].numpy()  # white: the pool's
        labeled = images["labeled"].numpy()
        assert unlabeled.min() > 200, batch
        assert (labeled.min(axis=(1, 2, 3)) < 100).all(), batch  # coloured: the labeled folder's


def test_without_a_pool_the_labeled_images_feed_the_unlabeled_stream(collection, tmp_path):
    out = tmp_path / "run"
    assert _train(out, f"folder:{collection / 'labeled'}") == 0
    stored = np.load(out / "split.npz")
    assert sorted(stored["unlabeled_paths"]) == sorted(stored["labeled_paths"])
    assert json.loads((out / "run.json").read_text())["split"]["parts"]["unlabeled"] == 21


def test_labeled_per_class_simulates_scarcity(collection, tmp_path):
    out = tmp_path / "run"
    data = f"folder:{collection / 'labeled'}"
    assert _train(out, data, "--labeled-per-class", "3", "--val-per-class", "1") == 0
    parts = json.loads((out / "run.json").read_text())["split"]["parts"]
    # gpq protocol: every 10th image a query (3 of 24), 3 per class labeled, one held out of them
    assert parts["query"] == 3 and parts["labeled"] == 3 * 3 - 3 and parts["validation"] == 3
    assert parts["database"] == parts["unlabeled"] == 24 - 3 - 9
    assert json.loads((out / "run.json").read_text())["split"]["protocol"] == "gpq"


def test_data_check_reports_parts_classes_and_unreadable_files(collection, tmp_path, capsys):
    labeled = _copy_labeled(collection, tmp_path / "labeled", 5)
    report_path = tmp_path / "check.json"
    argv = ["data", "check", "--data", f"folder:{labeled}", "--json", str(report_path)]
    assert cli.main(argv + ["--unlabeled", str(collection / "pool")]) == 0
    report = json.loads(report_path.read_text())
    assert report["parts"] == {
        "query": 3,
        "labeled": 12,
        "unlabeled": 20,
        "database": 12,
        "validation": 3,
    }
    assert report["per_class"]["labeled"] == [4, 4, 4]
    assert report["per_class"]["query"] == [1, 1, 1]
    assert report["num_classes"] == 3 and report["unreadable"] == []
    assert report["overlaps"] == {"query_labeled": 0, "query_database": 0}
    assert report["protocol"] == "given" and report["seen_classes"] is None
    assert report["zero_label_rows"] == {"query": 0, "labeled": 0, "database": 0}
    assert "the data can train" in capsys.readouterr().out

    # a truncated PNG: its header reads, its pixels do not; data check decodes every file
    bad = labeled / "red" / "red_0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "red_0.png" in err[0] and "cannot be read" in err[0], err
    report = json.loads(report_path.read_text())
    assert report["unreadable"] == [str(bad)] and report["can_train"] is False


def test_unseen_classes_are_neither_trained_nor_mixed(tmp_path, collection, capsys):
    labeled = tmp_path / "eight"
    rng = np.random.default_rng(1)
    for c in range(8):
        for i in range(4):
            _write(str(labeled / f"class{c}" / f"{i}.png"), (c * 30, 255 - c * 30, 90), rng)
    report_path = tmp_path / "check.json"
    argv = ["data", "check", "--data", f"folder:{labeled}", "--protocol", "unseen"]
    assert cli.main(argv + ["--json", str(report_path), "--val-per-class", "1"]) == 0
    report = json.loads(report_path.read_text())
    seen, unseen = report["seen_classes"], report["unseen_classes"]
    assert len(seen) == 6 and len(unseen) == 2 and not set(seen) & set(unseen)
    assert all(report["per_class"]["labeled"][c] == 0 for c in unseen)
    assert all(report["per_class"]["query"][c] == 0 for c in seen)
    assert all(report["per_class"]["database"][c] == 0 for c in seen)
    # validation images are of seen classes: searched among every class's database, so a run
    # under unseen validates (among the unseen database alone its mAP would be 0 at every epoch)
    out = tmp_path / "run"
    train = ["--protocol", "unseen", "--val-per-class", "1", "--eval-every", "1"]
    assert _train(out, f"folder:{labeled}", *train) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["split"]["protocol"] == "unseen" and record["split"]["parts"]["query"] == 2
    assert record["validation"]["best"]["val_mAP"] > 0
    # three classes cannot split 0.75 / 0.25 with two on each side
    assert (
        cli.main(
            ["data", "check", "--data", f"folder:{collection / 'labeled'}", "--protocol", "unseen"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2" in err[0] and "class" in err[0], err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--data", "digits", "--unlabeled", "POOL"], "carries its own unlabeled set"),
        (["--data", "folder:LABELED", "--unlabeled", "EMPTY"], "no images"),
        (["--data", "folder:LABELED", "--protocol", "cifar10-1"], "cifar10-1"),
        (["--data", "folder:LABELED", "--protocol", "unseen:1.5"], "unseen"),
        (["--data", "digits", "--image-size", "24"], "--image-size 24"),
    ],
)
def test_bad_collections_are_one_line_and_write_nothing(collection, tmp_path, capsys, argv, needle):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    paths = {
        "POOL": str(collection / "pool"),
        "LABELED": str(collection / "labeled"),
        "EMPTY": str(tmp_path / "empty"),
    }
    argv = [paths.get(a, a.replace("LABELED", paths["LABELED"])) for a in argv]
    out = tmp_path / "run"
    try:
        code = cli.main(["train", *argv, "--output", str(out), "--epochs", "1", *TINY[:6]])
    except SystemExit as exc:  # refused while parsing
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists() or not os.listdir(out) or os.listdir(out) == [".lock"]


def test_evaluate_reuses_the_runs_split_and_refuses_changed_data(collection, tmp_path, capsys):
    labeled = _copy_labeled(collection, tmp_path / "labeled")
    out = tmp_path / "run"
    assert _train(out, f"folder:{labeled}", "--val-per-class", "2") == 0
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(out / "model.keras"), "--data", f"folder:{labeled}"]
    assert cli.main(argv + ["--split", str(out), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["n_query"] == 6 and result["n_database"] == 18  # its 2 per class held out
    assert result["protocol"] == "given"
    capsys.readouterr()
    _write(str(labeled / "blue" / "blue_00.png"), CLASSES["blue"], np.random.default_rng(5))
    assert cli.main(argv + ["--split", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data changed" in err[0], err


def test_a_killed_streamed_run_resumes_to_the_weights_of_an_uninterrupted_one(collection, tmp_path):
    code = "import sys\nfrom gpq_keras import cli\nsys.exit(cli.main(sys.argv[1:]))"

    def argv(out):
        return [sys.executable, "-c", code, "train", "--data",
                f"folder:{collection / 'labeled'}", "--unlabeled", str(collection / "pool"),
                "--output", str(out), "--epochs", "12", "--batch-size", "4", "--deterministic",
                "--eval-every", "100", *TINY]  # fmt: skip

    whole = subprocess.run(argv(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(argv(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_backup(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    again = subprocess.run(argv(killed), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from the backup" in again.stdout
    a = load_gpq(tmp_path / "whole" / "model.keras")
    b = load_gpq(killed / "model.keras")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_index_build_indexes_labeled_folders_and_the_unlabeled_pool(collection, tmp_path, capsys):
    from gpq_keras import GPQ
    from gpq_keras.config import GPQConfig
    from gpq_keras.retrieval import PQIndex

    config = GPQConfig(
        num_subspaces=3,
        num_codewords=4,
        subspace_dim=4,
        num_classes=3,
        image_shape=(16, 16, 3),
        filters=(4, 4, 4, 4),
    )
    GPQ(config).save(tmp_path / "m.keras")
    index_path = tmp_path / "all.npz"
    argv = ["index", "build", "--model", str(tmp_path / "m.keras"), "--output", str(index_path)]
    # a glob: the pool's sub-folders are not classes
    argv += ["--images", str(collection / "labeled"), "--images", f"{collection / 'pool'}/**/*.png"]
    assert cli.main(argv) == 0
    index = PQIndex.load(index_path)
    assert index.ntotal == 24 + 20 and list(index.class_names) == list(CLASSES)
    pool = {str(p) for p in (collection / "pool").rglob("*.png")}
    sources = [str(s) for s in index.sources]
    labels = np.asarray(index.labels)
    assert {s for s, y in zip(sources, labels) if y == -1} == pool
    assert all(CLASSES and os.path.basename(os.path.dirname(s)) == list(CLASSES)[y]
               for s, y in zip(sources, labels) if y >= 0)  # fmt: skip
    report = tmp_path / "hits.json"
    query = sorted(pool)[0]
    search = ["search", "--model", str(tmp_path / "m.keras"), "--index", str(index_path)]
    assert cli.main(search + ["--image", query, "-k", "44", "--json", str(report)]) == 0
    hits = json.loads(report.read_text())["queries"][0]["results"]
    by_source = {hit["source"]: hit for hit in hits}
    assert all("class" not in by_source[p] for p in pool)
    assert all(by_source[s]["class"] in CLASSES for s in set(sources) - pool)


def _write_lists(root, width, rng, rows=(("train", 12), ("database", 16), ("test", 4))):
    """Lists of `width` multi-hot labels over images under root/images; every 4th row has none."""
    for part, count in rows:
        lines = []
        for i in range(count):
            labels = np.zeros(width, int)
            if i % 4:
                labels[rng.choice(width, 2, replace=False)] = 1
            path = f"images/{part}_{i}.png"
            _write(str(root / path), tuple(int(v) for v in rng.integers(0, 255, 3)), rng)
            lines.append(f"{path} {' '.join(map(str, labels))}")
        (root / f"{part}.txt").write_text("\n".join(lines) + "\n")


def test_a_list_data_set_checks_trains_and_evaluates(tmp_path, capsys):
    root = tmp_path / "coco"
    _write_lists(root, 24, np.random.default_rng(2))
    report_path = tmp_path / "check.json"
    assert cli.main(["data", "check", "--data", f"list:{root}", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["num_classes"] == 24 and report["protocol"] == "given"
    assert report["zero_label_rows"] == {"query": 1, "labeled": 3, "database": 4}
    assert report["parts"]["query"] == 4 and report["parts"]["database"] == 16
    assert report["parts"]["unlabeled"] == 16  # the database: there is no unlabeled.txt
    out = tmp_path / "run"
    assert _train(out, f"list:{root}", "--val-per-class", "0") == 0
    assert (
        cli.main(["evaluate", "--model", str(out / "model.keras"), "--data", f"list:{root}"]) == 0
    )
    assert "mAP: " in capsys.readouterr().out
    (root / "unlabeled.txt").write_text("images/train_0.png\n")
    code = _train(tmp_path / "run2", f"list:{root}", "--unlabeled", str(root / "images"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unlabeled.txt" in err[0], err


def test_review_cases_small_classes_odd_flags_and_undecodable_files(collection, tmp_path, capsys):
    from gpq_keras.data.image_files import ImageFiles
    from gpq_keras.data.split import hold_out_validation

    labeled = _copy_labeled(collection, tmp_path / "labeled")
    os.makedirs(labeled / "zebra")  # a class of one image keeps it labeled: no query from it
    _write(str(labeled / "zebra" / "z.png"), (10, 10, 10), np.random.default_rng(3))
    bad = labeled / "red" / "red_7.png"  # its header reads, its pixels do not
    bad.write_bytes(bad.read_bytes()[:-30])
    out = tmp_path / "run"
    assert _train(out, f"folder:{labeled}") == 2  # the bad file stops the streamed run, named
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "red_7.png: not a decodable image" in err[0], err
    assert "function_node" not in err[0]
    assert _train(out, f"folder:{labeled}", "--skip-unreadable", "--restart") == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "red_7.png" in err
    parts = json.loads((out / "run.json").read_text())["split"]["parts"]
    assert parts["labeled"] == 3 * 7 + 1 - 1 and parts["query"] == 3  # zebra: 1 labeled, no query
    stored = np.load(out / "split.npz")
    assert str(bad) not in set(stored["labeled_paths"]) | set(stored["query_paths"])
    # the run's split from another spelling of the same folder (relative, from its parent)
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        argv = ["evaluate", "--model", "run/model.keras", "--data", "folder:labeled"]
        assert cli.main(argv + ["--split", "run", "--skip-unreadable"]) == 0
    finally:
        os.chdir(here)
    capsys.readouterr()
    # flags that do not fit the data: one line each
    lists = tmp_path / "lists"
    _write_lists(lists, 5, np.random.default_rng(4))
    assert _train(tmp_path / "r2", f"list:{lists}", "--labeled-per-class", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labeled-per-class" in err[0], err
    check = ["data", "check", "--data", f"folder:{collection / 'labeled'}", "--val-per-class", "0"]
    assert cli.main(check) == 0
    # unseen on a folder: the validation images held out of the seen classes are not searched
    # among a database that holds them
    eight = tmp_path / "eight"
    for c in range(8):
        for i in range(4):
            _write(str(eight / f"c{c}" / f"{i}.png"), (c * 30, 90, 90), np.random.default_rng(c))
    split = load_data(f"folder:{eight}", protocol="unseen", image_size=16)
    train, x_val, _ = hold_out_validation(split, 1)
    assert len(x_val) == 6 and len(train.x_db_all) == 8 * 3  # the given database: 3 per class
    x_search, _ = train.validation_database(x_val)
    assert not set(x_val.paths) & set(x_search.paths)
    with pytest.raises(TypeError, match="read"):
        np.asarray(ImageFiles(list(x_val.paths)))
