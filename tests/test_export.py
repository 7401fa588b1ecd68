import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from gpq_keras import GPQ, cli
from gpq_keras.export import codebook_record, export_model, export_saved_model
from gpq_keras.files import TEMPORARY_PREFIX, current_umask
from gpq_keras.retrieval import ProductQuantizer

RNG = np.random.default_rng(5)

# Run in a fresh interpreter: TensorFlow and NumPy only, so the SavedModel must load without
# gpq_keras.
_SERVE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    model_dir, images_file, out_file = sys.argv[1:]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    out = serve(images=tf.constant(np.load(images_file)))
    assert "gpq_keras" not in sys.modules, "the SavedModel pulled in gpq_keras"
    np.savez(
        out_file, features=out["features"].numpy(), codes=out["codes"].numpy(), keys=sorted(out)
    )
""")


def _pixels(n=10, shape=(16, 16, 3)):
    return RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _check_outputs(model, images, features, codes, mode=None):
    m = model.gpq_config.num_subspaces
    assert features.dtype == np.float32 and features.shape == (
        len(images),
        model.gpq_config.feature_dim,
    )
    assert codes.dtype == np.uint8 and codes.shape == (len(images), m)
    expected = model.encode(images)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(codes, ProductQuantizer.from_model(model, mode).encode(expected))


@pytest.mark.large
def test_saved_model_serves_features_and_codes_without_gpq_keras(tiny_config, tmp_path):
    model = GPQ(tiny_config)
    images = _pixels()
    path = export_saved_model(model, tmp_path / "served")
    assert path == str(tmp_path / "served") and os.path.isfile(
        tmp_path / "served" / "saved_model.pb"
    )
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TEMPORARY_PREFIX)]
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's 0700
    np.save(tmp_path / "images.npy", images)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_SCRIPT,
            str(tmp_path / "served"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npz"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert list(out["keys"]) == ["codes", "features"]
    _check_outputs(model, images, out["features"], out["codes"])
    assert len(np.unique(out["codes"])) > 1  # not a degenerate model whose codes are all equal


@pytest.mark.large
def test_each_retrieval_mode_exports_its_own_codes(tiny_config, tmp_path):
    model = GPQ(tiny_config)
    # Codewords of very different lengths: codes against the raw Z instead of intra_norm(Z) would
    # differ.
    model.quantizer.codewords.assign(model.codebook * np.float32([[1.0], [8.0], [0.1], [3.0]]))
    images = _pixels()
    for mode in ("original", "consistent"):
        serve = tf.saved_model.load(export_saved_model(model, tmp_path / mode, mode)).signatures[
            "serving_default"
        ]
        out = serve(images=tf.constant(images))
        _check_outputs(model, images, out["features"].numpy(), out["codes"].numpy(), mode)
    with pytest.raises(ValueError, match="mode"):
        export_saved_model(model, tmp_path / "bad", mode="nearest")
    assert sorted(os.listdir(tmp_path)) == ["consistent", "original"]


@pytest.mark.large
def test_equal_dot_products_give_the_lowest_codeword(tiny_config, tmp_path):
    model = GPQ(tiny_config)
    z = model.codebook
    z[1], z[3] = z[0], z[2]  # codewords 1 and 3 tie exactly with 0 and 2 in every sub-space
    model.quantizer.codewords.assign(z)
    images = _pixels()
    serve = tf.saved_model.load(export_saved_model(model, tmp_path / "served", "original"))
    codes = serve.signatures["serving_default"](images=tf.constant(images))["codes"].numpy()
    assert set(np.unique(codes)) <= {0, 2}
    expected = ProductQuantizer.from_model(model, "original").encode(model.encode(images))
    np.testing.assert_array_equal(codes, expected)


@pytest.mark.large
def test_a_model_taking_normalised_images_is_served_pixels(tiny_config, tmp_path):
    model = GPQ(
        tiny_config, normalize_pixels=False
    )  # as saved by earlier versions; encode normalises uint8
    images = _pixels()
    out = tf.saved_model.load(export_saved_model(model, tmp_path / "served")).signatures[
        "serving_default"
    ](images=tf.constant(images))
    _check_outputs(model, images, out["features"].numpy(), out["codes"].numpy())


def test_never_overwrites_and_cleans_up_after_a_failure(tiny_config, tmp_path, monkeypatch):
    model = GPQ(tiny_config)
    existing = tmp_path / "served"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(existing)):
        export_saved_model(model, existing)
    assert os.listdir(existing) == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        export_saved_model(model, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"

    def failing_write_out(self, filepath, **kwargs):
        with open(os.path.join(filepath, "saved_model.pb"), "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    archive_class = type(keras.export.ExportArchive())  # the backend's subclass, which export uses
    monkeypatch.setattr(archive_class, "write_out", failing_write_out)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == [
        "file",
        "served",
    ]  # neither `new` nor a `.tmp-` directory


@pytest.mark.large
def test_gpq_export_writes_the_saved_model_and_its_codebook_json(tiny_config, tmp_path, capsys):
    model = GPQ(tiny_config)
    model.save(tmp_path / "model.keras")
    out = tmp_path / "served" / "gpq" / "1"  # TF Serving's layout: the JSON beside version 1
    assert cli.main(["export", "--model", str(tmp_path / "model.keras"), "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {out}.codebook.json: the distance codebook, for look-up tables and ADC"
    )
    assert sorted(os.listdir(out.parent)) == ["1", "1.codebook.json"]
    with open(f"{out}.codebook.json", encoding="utf-8") as fh:
        assert json.load(fh) == codebook_record(model, None, "savedmodel")
    images = _pixels()
    served = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))
    _check_outputs(model, images, served["features"].numpy(), served["codes"].numpy())

    (tmp_path / "2.codebook.json").write_text("{}")  # a JSON without its export: still refused
    with pytest.raises(ValueError, match=r"2\.codebook\.json already exists"):
        export_model(model, tmp_path / "2")
    assert not (tmp_path / "2").exists()
    assert (tmp_path / "2.codebook.json").read_text() == "{}"
