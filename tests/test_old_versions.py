"""Files from earlier versions keep loading: the fixtures in tests/data were written by the code of
those versions (tests/data/make_old_fixtures.py says how; tests/data/README.md lists them), each
with its outputs as that code computed them in a sidecar `*_expected.npz`. Today's code must read
them and give the same outputs. The fixtures are never rewritten by today's code: a test that fails
here is a file users have that stopped working."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpq_keras.model import load_gpq
from gpq_keras.retrieval import PQIndex, ProductQuantizer, open_index

backends = pytest.mark.backends  # also on JAX (`make test-jax`)

DATA = os.path.join(os.path.dirname(__file__), "data")
INDEXES = ["pqindex_v1_336dcc3", "pqindex_v2_8d211cd", "pqindex_v3_45e8c99"]


def expected(name):
    with np.load(os.path.join(DATA, f"{name}_expected.npz")) as sidecar:
        return dict(sidecar)


@pytest.fixture(scope="module")
def previous_model():
    return load_gpq(os.path.join(DATA, "gpq_45e8c99_tiny.keras"))


@backends
def test_a_model_of_the_previous_release_loads_and_gives_its_features_and_codes(previous_model):
    """gpq_45e8c99_tiny.keras (45e8c99: pixels in, consistent mode, one Adam step) loads in safe
    mode with its features (1e-5), its codes in both modes, Z, C and its fingerprint."""
    want = expected("gpq_45e8c99_tiny")
    model = previous_model
    assert model.gpq_config.retrieval_mode == str(want["retrieval_mode"]) == "consistent"
    assert int(model.optimizer.iterations) == 1
    features = model.encode(want["images"])
    np.testing.assert_allclose(features, want["features"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        model.predict(want["images"], verbose=0), want["predict"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(model.codebook, want["codebook"])
    np.testing.assert_array_equal(model.prototypes, want["prototypes"])
    assert model.fingerprint == str(want["fingerprint"])
    for mode in ("consistent", "original"):
        np.testing.assert_array_equal(
            ProductQuantizer.from_model(model, mode).encode(features), want[f"codes_{mode}"], mode
        )


@backends
@pytest.mark.parametrize("name", INDEXES)
def test_an_index_of_each_format_version_loads_and_gives_its_search_results(name):
    """PQIndex files of format 1 (336dcc3), 2 (8d211cd) and 3 (45e8c99) load with their codes,
    ids, labels and (3) sources and class names, every file stat unknown, and give the search
    results the code that wrote them gave."""
    want = expected(name)
    index = PQIndex.load(os.path.join(DATA, f"{name}.npz"))
    version = int(name.split("_")[1][1:])
    with np.load(os.path.join(DATA, f"{name}.npz")) as raw:
        assert int(raw["format_version"]) == version  # the fixture is what it says it is
    np.testing.assert_array_equal(index.codes, want["codes"])
    np.testing.assert_array_equal(index.labels, want["labels"])
    np.testing.assert_array_equal(index.ids, want.get("item_ids", np.arange(index.ntotal)))
    if version == 2:
        assert index.model_fingerprint == str(want["fingerprint"])
    if version == 3:
        np.testing.assert_array_equal(index.sources, want["sources"])
        assert index.class_names == list(want["class_names"])
        assert (index.file_stats == -1).all()  # unknown: `index add --update` re-encodes them
    else:
        assert index.sources is None and index.class_names is None
    distances, ids = index.search(want["queries"], int(want["k"]))
    np.testing.assert_array_equal(ids, want["ids"])
    np.testing.assert_allclose(distances, want["distances"], rtol=1e-5, atol=1e-5)


@backends
def test_the_previous_release_s_index_opens_with_its_model(previous_model):
    """open_index (what gpq index search and gpq search use) takes the format 3 index with the
    model it was built with: today's fingerprint of the old model is the one the index recorded."""
    want = expected("pqindex_v3_45e8c99")
    index = open_index(os.path.join(DATA, "pqindex_v3_45e8c99.npz"), model=previous_model)
    assert index.model_fingerprint == previous_model.fingerprint
    distances, ids = index.search(want["queries"], int(want["k"]))
    np.testing.assert_array_equal(ids, want["ids"])
    np.testing.assert_allclose(distances, want["distances"], rtol=1e-5, atol=1e-5)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.large
def test_a_run_folder_of_the_previous_release_resumes(tmp_path):
    """run_45e8c99 (45e8c99's gpq train, interrupted after epoch 1 of 2) resumes when its command
    is rerun with today's code: one more epoch from its backup, its log row of epoch 1 kept, and
    the final model the old code's own resume gave (features to 1e-4)."""
    want = expected("run_45e8c99")
    out = tmp_path / "run"
    shutil.copytree(os.path.join(DATA, "run_45e8c99"), out)  # tests/data stays as it is
    before = json.loads((out / "run.json").read_text())
    assert before["status"] == "interrupted" and before["epochs_done"] == 1
    assert [int(r["epoch"]) for r in _rows(out / "log.csv")] == [0]
    # The old checkpoint of epoch 1 loads too.
    checkpoint = load_gpq(out / "checkpoints" / "epoch_001.keras")
    assert int(checkpoint.optimizer.iterations) == int(want["steps_per_epoch"])

    argv = [str(a) for a in want["args"]] + ["--output", str(out)]
    assert argv == before["command"][1:-1] + [str(out)]  # the command the run folder records
    code = "import sys\nfrom gpq_keras import cli\nsys.exit(cli.main(sys.argv[1:]))"
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    done = subprocess.run(
        [sys.executable, "-c", code] + argv,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "resuming from the backup" in done.stdout
    assert "Epoch 2/2" in done.stdout and "Epoch 1/2" not in done.stdout

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["resumed"][0]["epoch"] == 1
    rows = _rows(out / "log.csv")
    old_rows = list(csv.DictReader(str(want["log_csv"]).splitlines()))  # the old code's resume
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[0] == old_rows[0]  # epoch 1's row as the old code wrote it, with the new columns
    for key in ("loss", "npq_loss", "cls_loss", "entropy_loss", "val_mAP", "val_codeword_entropy"):
        assert float(rows[1][key]) == pytest.approx(float(old_rows[1][key]), rel=1e-4), key
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_001.keras", "epoch_002.keras"]
    assert not (out / "backup").exists()
    model = load_gpq(out / "model.keras")
    assert int(model.optimizer.iterations) == int(want["iterations"])
    np.testing.assert_allclose(model.encode(want["images"]), want["features"], rtol=1e-4, atol=1e-4)
