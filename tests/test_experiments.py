"""`benchmarks/experiments.py --quick`: every group trains, scores and reports, with its provenance
(unseen: unseen@unseen and unseen@all on the seed's class split; embeddings: GPQ's MLP head and
faiss PQ / OPQ on the digits' own 8x8 pixels); and a deterministic `gpq train` gives the same model
twice."""

import json
import math
import os
import subprocess
import sys
import types

import matplotlib.image
import numpy as np
import pytest
from data_fakes import save_split

from gpq_keras.data import digits, load_data

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import experiments  # noqa: E402


def _run(args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.large  # trains a dozen small models: in `make test`
def test_quick_experiments_write_results_tables_and_plot(tmp_path):
    out = _run(["benchmarks/experiments.py", "--quick", "--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == [
        "ablation.json",
        "baselines.json",
        "bits.json",
        "embeddings.json",
        "labels.json",
        "labels.png",
        "results.md",
        "unseen.json",
    ]
    plan = experiments.plan(experiments.GROUPS, [5, 50], [12, 48])
    runs = {}
    for group in experiments.GROUPS:
        with open(tmp_path / f"{group}.json") as fh:
            payload = json.load(fh)
        assert payload["command"].endswith(f"--quick --out {tmp_path}")
        assert payload["seeds"] == [0] and payload["steps"] == 8 and payload["group"] == group
        assert {"tensorflow", "keras", "numpy", "faiss"} <= set(payload["versions"])
        got = [(r["method"], r["labels_per_class"], r["bits"]) for r in payload["runs"]]
        assert got == plan[group]
        for row in payload["runs"]:
            assert 0.0 < row["mAP"] <= 1.0 and 0.0 <= row["precision@10"] <= 1.0
            key = (row["method"], row["labels_per_class"], row["bits"], row["seed"])
            key += (row.get("protocol"),)
            assert runs.setdefault(key, row) == row  # a setting shared by groups is trained once
    unseen = load_data("digits", protocol="unseen", seed=0)
    with open(tmp_path / "unseen.json") as fh:
        payload = json.load(fh)
    assert payload["protocol"] == "unseen" and payload["split"] == {
        "0": {"labeled": 400, "query": len(unseen.x_query), "database": len(unseen.x_db)}
        | {"database_all": 1117}
    }
    for row in payload["runs"]:
        assert row["protocol"] == "unseen" and row["unseen_classes"] == list(unseen.unseen_classes)
        assert 0.0 < row["unseen@all mAP"] <= 1.0 and 0.0 <= row["unseen@all precision@10"] <= 1.0
        # among every class's database the unseen queries find fewer of their own: mAP drops
        assert row["unseen@all mAP"] < row["mAP"]
    # the same method and seed on the unseen split is another run than on the gpq split
    assert runs[("GPQ", 50, 48, 0, "unseen")]["mAP"] != runs[("GPQ", 50, 48, 0, None)]["mAP"]
    # PQ on pixels does not depend on the labels: the same database, the same score.
    assert (
        runs[(experiments.PIXELS, 5, 48, 0, None)]["mAP"]
        == runs[(experiments.PIXELS, 50, 48, 0, None)]["mAP"]
    )
    # --quick's labels 5 and 50 are both embedding budgets; the vectors are 64-d
    assert [n for _, n, _ in plan["embeddings"]] == [5, 5, 5, 50, 50, 50]
    with open(tmp_path / "embeddings.json") as fh:
        assert json.load(fh)["input_dim"] == 64
    with open(tmp_path / "results.md") as fh:
        table = fh.read()
    assert (
        table.count("| method | labels / class | bits |") == 5
        and table.count("| method | bits | unseen@unseen mAP | unseen@all mAP |") == 1
        and "Command: `python benchmarks/experiments.py" in table
    )
    gpq = runs[("GPQ", 50, 48, 0, None)]["mAP"]
    assert f"| GPQ | 50 | 48 | {gpq:.4f} +- 0.0000 |" in table and table in out
    gpq = runs[("GPQ", 50, 48, 0, "unseen")]
    cells = [gpq[k] for k in ("mAP", "unseen@all mAP", "precision@10", "unseen@all precision@10")]
    assert "| GPQ | 48 | " + " | ".join(f"{v:.4f} +- 0.0000" for v in cells) + " | 1 |" in table
    assert f"unseen classes by seed: 0: {list(unseen.unseen_classes)}" in table
    assert matplotlib.image.imread(tmp_path / "labels.png").shape[:2] == (400, 600)
    os.remove(tmp_path / "results.md")
    _run(["benchmarks/experiments.py", "--report-only", "--out", str(tmp_path)])
    with open(tmp_path / "results.md") as fh:
        assert fh.read() == table


def test_embeddings_group_runs_at_the_labels_among_5_10_and_50():
    methods = list(experiments.EMBEDDINGS)
    assert methods == ["GPQ on embeddings (mlp)", "PQ on the embeddings", "OPQ on the embeddings"]
    plan = experiments.plan(["embeddings"], [5, 10, 25, 50], [12, 48])  # the default --labels
    assert plan == {"embeddings": [(m, n, 48) for n in (5, 10, 50) for m in methods]}
    assert experiments.plan(["embeddings"], [50, 7, 5], [48])["embeddings"] == [
        (m, n, 48) for n in (50, 5) for m in methods
    ]
    with pytest.raises(SystemExit) as error:  # none of them: refused before anything trains
        experiments.main(["--groups", "embeddings", "--labels", "25", "--out", "unused"])
    assert error.value.code == 2


def test_embed_gives_each_digit_its_own_8x8_pixels_in_the_split_order():
    # Runner.split without a Runner (no TensorFlow set-up): 5 labeled images per class
    runner = types.SimpleNamespace(splits={}, load_data=load_data)
    runner.args = types.SimpleNamespace(data="digits")
    split = experiments.Runner.split(runner, 5)
    vectors = experiments.embed(split, "digits")
    assert vectors.takes_vectors and vectors.num_classes == 10
    for part in ("query", "labeled", "db", "unlabeled"):
        x, v = getattr(split, f"x_{part}"), getattr(vectors, f"x_{part}")
        assert v.shape == (len(x), 64) and v.dtype == np.float32
        assert 0.0 <= v.min() and v.max() <= 1.0
        # enlarged as `digits.load_images` enlarges the 8x8 originals, they give the images back
        small = np.round(v.astype(np.float64) * 255.0).reshape(-1, 8, 8, 1)
        big = np.clip(np.round(digits.resize_bilinear(small, (32, 32))), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(big[..., 0], x[..., 0])
    for part in ("query", "labeled", "db"):
        np.testing.assert_array_equal(getattr(vectors, f"y_{part}"), getattr(split, f"y_{part}"))
    assert len(vectors.x_labeled) == 50 and np.bincount(vectors.y_labeled).tolist() == [5] * 10
    assert vectors.x_unlabeled is vectors.x_db  # the database is the unlabeled set, as for images


@pytest.mark.large  # trains six small MLP heads: in `make test`
def test_embeddings_group_writes_its_rows_and_table(tmp_path):
    args = ["--groups", "embeddings", "--seeds", "0,1", "--steps", "4", "--out", str(tmp_path)]
    out = _run(["benchmarks/experiments.py", *args])
    assert sorted(os.listdir(tmp_path)) == ["embeddings.json", "results.md"]
    with open(tmp_path / "embeddings.json") as fh:
        payload = json.load(fh)
    assert payload["group"] == "embeddings" and payload["input_dim"] == 64
    assert payload["learning_rate"] == experiments.EMBEDDING_LEARNING_RATE
    wanted = experiments.plan(["embeddings"], [5, 10, 25, 50], [48])["embeddings"]
    rows = {(r["method"], r["labels_per_class"], r["bits"], r["seed"]): r for r in payload["runs"]}
    assert list(rows) == [(m, n, b, s) for m, n, b in wanted for s in (0, 1)]
    for row in rows.values():
        assert math.isfinite(row["mAP"]) and 0.0 < row["mAP"] <= 1.0
        assert 0.0 <= row["precision@10"] <= 1.0
    gpq, pq, opq = experiments.EMBEDDINGS
    # faiss sees neither labels nor seed: one score for every budget and seed; GPQ's differ
    for method in (pq, opq):
        assert len({rows[(method, n, 48, s)]["mAP"] for n in (5, 10, 50) for s in (0, 1)}) == 1
    assert rows[(gpq, 5, 48, 0)]["mAP"] != rows[(gpq, 5, 48, 1)]["mAP"]
    with open(tmp_path / "results.md") as fh:
        table = fh.read()
    assert table in out and table.count("### ") == 1 and "### embeddings\n\nGPQ's head" in table
    assert "each image as a 64-d vector (the 8x8 pixels of the digits / 255)" in table
    summary = experiments.summarise(payload["runs"])
    for method, n, bits in wanted:
        mean, std, p_mean, p_std, seeds = summary[(method, n, bits)]
        line = (
            f"| {method} | {n} | 48 | {mean:.4f} +- {std:.4f} | {p_mean:.4f} +- {p_std:.4f} | 2 |"
        )
        assert seeds == 2 and line in table
    mean = np.mean([rows[(gpq, 50, 48, s)]["mAP"] for s in (0, 1)])
    assert f"| {gpq} | 50 | 48 | {mean:.4f} +- " in table


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [
        dict(method="GPQ", labels_per_class=5, bits=48, seed=s, mAP=m, **{"precision@10": p})
        for s, m, p in ((0, 0.5, 0.6), (1, 0.7, 0.8), (2, 0.9, 1.0))
    ]
    ((mean, std, p_mean, p_std, n),) = experiments.summarise(rows).values()
    assert (
        n == 3
        and mean == pytest.approx(0.7)
        and std == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    )
    assert p_mean == pytest.approx(0.8) and p_std == pytest.approx(0.2)


def test_report_names_the_command_of_a_group_run_apart(tmp_path):
    meta = dict(data="digits", steps=150, batch_size=100, filters=[16, 32, 64, 64], seeds=[0, 1])
    meta.update(mode="consistent", machine="m", date="d1", command="python e.py", minutes=80.0)
    row = dict(method="GPQ", labels_per_class=50, bits=48, seed=0, mAP=0.5, **{"precision@10": 1})
    unseen = dict(row, protocol="unseen", unseen_classes=[1, 8])
    unseen.update({"unseen@all mAP": 0.25, "unseen@all precision@10": 0.5})
    apart = {"date": "d2", "command": "python e.py --groups unseen", "minutes": 12.0}
    for group, extra, rows in (
        ("ablation", {}, [row]),
        ("bits", {"minutes": 90.0}, [row]),  # the same command, later: 90 min so far
        ("unseen", apart, [unseen]),
    ):
        with open(tmp_path / f"{group}.json", "w") as fh:
            json.dump({**meta, **extra, "group": group, "runs": rows}, fh)
    text = experiments.report(str(tmp_path))
    assert "102 min in all" in text and "Command: `python e.py`" in text
    assert "### unseen\n\nRun by `python e.py --groups unseen` (d2, 12 min).\n\nUnseen" in text
    assert "| GPQ | 48 | 0.5000 +- 0.0000 | 0.2500 +- 0.0000 | 1.0000 +- 0.0000 |" in text
    assert "### bits\n\n| method" in text  # same command as the header: no note


@pytest.mark.large
def test_deterministic_training_gives_the_same_model_twice(tmp_path):
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (120, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 40)
    save_split(data, images, labels, 12, 60)
    weights = []
    for run in ("a", "b"):
        _run(
            [
                "-m",
                "gpq_keras.cli",
                "train",
                "--data",
                f"npz:{data}",
                "--output",
                str(tmp_path / run),
                "--epochs",
                "2",
                "--batch-size",
                "12",
                "--n-book",
                "2",
                "--n-word",
                "4",
                "--filters",
                "4,8,8,8",
                "--seed",
                "3",
                "--deterministic",
                "--val-per-class",
                "0",
            ]
        )
        code = (
            "import numpy as np, sys; from gpq_keras.model import load_gpq; "
            "m = load_gpq(sys.argv[1]); np.savez(sys.argv[2], *[w.numpy() for w in m.weights])"
        )
        _run(["-c", code, str(tmp_path / run / "model.keras"), str(tmp_path / f"{run}.npz")])
        with np.load(tmp_path / f"{run}.npz") as w:
            weights.append([w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))])
    assert len(weights[0]) > 10
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
