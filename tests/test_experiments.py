"""`benchmarks/experiments.py --quick`: every group trains, scores and reports, with its provenance
(unseen: unseen@unseen and unseen@all on the seed's class split); and a deterministic `gpq train`
gives the same model twice."""

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from data_fakes import save_split

from gpq_keras.data import load_data

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
    with open(tmp_path / "results.md") as fh:
        table = fh.read()
    assert (
        table.count("| method | labels / class | bits |") == 4
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
