"""`benchmarks/reproduce.py`: one run folder per (bits, seed) through `gpq train`, the model chosen
on validation, evaluated on the run's own split, tabulated; a rerun trains nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from data_fakes import fake_cifar_images, write_cifar_folder

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPT = os.path.join(ROOT, "benchmarks", "reproduce.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import reproduce  # noqa: E402


def _run(args, cwd, status=0):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, SCRIPT, *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.large  # trains three tiny models through `gpq train`
def test_reproduce_trains_evaluates_tabulates_and_a_rerun_trains_nothing(tmp_path):
    images, labels = fake_cifar_images(600)  # 60 per class: one gpq query per class
    data = f"cifar10:{write_cifar_folder(tmp_path / 'cifar', images, labels)}"
    out = tmp_path / "out"
    tiny = ["--epochs", "2", "--batch-size", "20", "--seeds", "1", "--out", str(out)]
    tiny += ["--filters", "4,4,4,4", "--labeled-per-class", "20"]  # passed to gpq train
    unseen = ["--data", data, "--protocol", "unseen", "--bits", "12,24", *tiny]
    gpq = ["--data", data, "--protocol", "gpq", "--bits", "12", *tiny]
    logs = [_run(unseen, tmp_path), _run(gpq, tmp_path)]
    assert [log.count("$ gpq train") for log in logs] == [2, 1]
    payload = _load(out / "results.json")
    runs = {(r["protocol"], r["bits"], r["seed"]): r for r in payload["runs"]}
    assert sorted(runs) == [("gpq", 12, 0), ("unseen", 12, 0), ("unseen", 24, 0)]
    for (protocol, bits, seed), run in runs.items():
        folder = out / protocol / f"{bits}bits-seed{seed}"
        record = _load(folder / "run.json")
        assert run["run"] == str(folder) and run["record"] == str(folder / "run.json")
        assert record["status"] == "finished" and run["trained"] and run["status"] == "finished"
        assert record["split"]["protocol"] == protocol and record["split"]["seed"] == seed
        assert record["config"]["num_subspaces"] == bits // 4
        assert "--filters" in record["command"] and "4,4,4,4" in record["command"]
        assert record["config"]["learning_rate"] == 2e-4  # GPQConfig's default, the original's
        report = _load(run["evaluation"])
        assert report["model"] == os.path.abspath(run["checkpoint"])
        assert report["protocol"] == protocol and run["mAP"] == report["mAP"]
        if protocol == "gpq":  # chosen on validation, never on the test queries
            assert run["checkpoint"] == str(folder / "best.keras")
            assert run["selected_on"] == "validation" and run["val_mAP"] > 0
            assert run["parts"] == {
                "query": 10,
                "labeled": 180,
                "unlabeled": 390,
                "database": 390,
                "validation": 20,
            }
        else:
            assert report["unseen@unseen"] == run["unseen@unseen"] == run["mAP"]
            assert report["unseen@all"] == run["unseen@all"] and run["n_database_all"] == 390
            assert len(run["unseen_classes"]) == 2
            # validation images of seen classes against the unseen database: val_mAP 0 cannot
            # choose, so the last epoch's model is evaluated, and the entry says why
            picked = "best.keras" if run["val_mAP"] else "model.keras"
            assert run["checkpoint"] == str(folder / picked)
            why = "validation" if run["val_mAP"] else "last epoch (best val_mAP 0"
            assert run["selected_on"].startswith(why)
    table = (out / "table.md").read_text()
    head = "| data, protocol | 12 bits | 24 bits |"
    gpq_row = f"| cifar10, gpq | {runs[('gpq', 12, 0)]['mAP']:.4f} (1 seed) | – |"
    assert head in table and gpq_row in table
    for metric in ("unseen@unseen", "unseen@all"):
        cells = [f"{runs[('unseen', b, 0)][metric]:.4f} (1 seed)" for b in (12, 24)]
        assert f"| cifar10, unseen ({metric}) | {' | '.join(cells)} |" in table
    assert "2 epochs of batch 20 labeled + 20 unlabeled, scratch, seeds [0], mAP@all" in table
    assert "Command: `python benchmarks/reproduce.py --data" in table

    # a rerun trains nothing and evaluates nothing again
    rewritten = ("table.md", "results.json")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    for args in (unseen, gpq):
        log = _run(args, tmp_path)
        assert "$ gpq" not in log and "finished, not trained again" in log
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name not in rewritten} == {
        p: t for p, t in stamps.items() if p.name not in rewritten
    }  # every run's model, best, run.json, split and evaluation untouched
    again = _load(out / "results.json")
    assert [r["trained"] for r in again["runs"]] == [False] * 3
    assert [r["mAP"] for r in again["runs"]] == [r["mAP"] for r in payload["runs"]]
    assert (out / "table.md").read_text() == table

    # without best.keras the last epoch's model.keras is evaluated, and recorded as such
    os.remove(out / "gpq" / "12bits-seed0" / "best.keras")
    log = _run(gpq, tmp_path)
    assert "$ gpq train" not in log and "$ gpq evaluate" in log and "no best.keras" in log
    run = {r["protocol"]: r for r in _load(out / "results.json")["runs"]}["gpq"]
    assert run["checkpoint"] == str(out / "gpq" / "12bits-seed0" / "model.keras")
    assert run["selected_on"] == "last epoch (no best.keras: no validation images)"

    # a finished run is not silently reused with other arguments
    log = _run([*gpq, "--epochs", "3"], tmp_path, status=2)
    assert "holds a finished run trained with other arguments (--epochs: --epochs 2)" in log


def test_flags_it_sets_itself_are_refused_among_gpq_train_flags(tmp_path):
    for extra, flag in (
        (["--seed", "3"], "--seed"),
        (["--output", "x"], "--output"),
        (["--n-book", "4"], "--n-book"),
        (["--overwrite"], "--overwrite"),
    ):
        log = _run(["--data", "digits", "--out", str(tmp_path), *extra], tmp_path, status=2)
        assert f"gpq train {flag} is set by reproduce.py" in log
    log = _run(["--data", "digits", "--filters", "3"], tmp_path, status=2)
    assert "argument --filters" in log and "a flag for gpq train above is wrong" in log
    assert not os.listdir(tmp_path)


def test_seeds_bits_and_protocols_parse():
    assert reproduce._seeds("3") == [0, 1, 2] and reproduce._seeds("4,7") == [4, 7]
    assert reproduce._seeds("5,") == [5]
    assert reproduce._bits("48,12") == [48, 12]
    assert reproduce._protocol("Unseen:0.5") == "unseen:0.5"
    assert reproduce.protocol_folder("unseen:0.5") == "unseen-0.5"
    for parse, text in (
        (reproduce._seeds, "0"),
        (reproduce._seeds, "1,1"),
        (reproduce._bits, "16"),
        (reproduce._protocol, "given"),
        (reproduce._protocol, "unseen:2"),
    ):
        with pytest.raises(Exception, match="expected|FRACTION"):
            parse(text)


def test_run_state_reads_run_json(tmp_path):
    assert reproduce.run_state(tmp_path / "none") == "new"
    for status, files, state in (
        ("finished", ["model.keras"], "finished"),
        ("finished", [], "interrupted"),  # no model: gpq train finds out
        ("running", ["model.keras"], "interrupted"),
        ("interrupted", [], "interrupted"),
        ("diverged", [], "diverged"),
    ):
        folder = tmp_path / f"{status}-{len(files)}"
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"status": status}))
        for name in files:
            (folder / name).write_bytes(b"")
        assert reproduce.run_state(folder) == state


def test_table_is_mean_and_sample_std_over_seeds_per_bits():
    def run(protocol, bits, seed, value):
        return {
            "data": "cifar10:c",
            "protocol": protocol,
            "bits": bits,
            "seed": seed,
            "status": "finished",
            "mAP": value,
            "unseen@unseen": value,
            "unseen@all": value / 2,
            "selected_on": "validation",
            "mode": "consistent",
            "run": f"r{bits}{seed}",
        }

    values = [0.5, 0.7, 0.9]
    runs = [run("gpq", 48, s, v) for s, v in enumerate(values)] + [run("unseen", 12, 0, 0.4)]
    runs.append({**run("gpq", 12, 0, 0.1), "status": "diverged"})
    settings = {
        p: {"data": "cifar10:c", "epochs": 300, "batch_size": 500, "top_k": None}
        | {"train_flags": ["--imagenet-mat", "x.mat"], "command": f"cmd {p}"}
        for p in ("gpq", "unseen")
    }
    table = reproduce.markdown({"runs": runs, "settings": settings})
    std = np.std(values, ddof=1)
    assert "| data, protocol | 12 bits | 48 bits |" in table
    assert f"| cifar10, gpq | – | 0.7000 ± {std:.4f} |" in table
    assert "| cifar10, unseen (unseen@unseen) | 0.4000 (1 seed) | – |" in table
    assert "| cifar10, unseen (unseen@all) | 0.2000 (1 seed) | – |" in table
    assert "ImageNet initialisation, seeds [0, 1, 2], mAP@all" in table
    assert "Diverged, left out: r120." in table and "Command: `cmd unseen`" in table
