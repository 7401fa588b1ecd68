"""`gpq export --format onnx|tflite` and the codebook JSON beside every export: a small trained
model run through onnxruntime and the LiteRT interpreter gives the codes and features of
`model.encode` and `ProductQuantizer`, the JSON lets NumPy reproduce `PQIndex.search`'s distances,
outputs are never replaced, and the NumPy snippets of docs/export.md do what they say."""

import json
import os
import re

import keras
import numpy as np
import pytest
from test_cli_images import CONFIG  # the tiny model of the CLI's image tests

from gpq_keras import GPQ, cli
from gpq_keras import export as export_module
from gpq_keras.backbones import build_backbone
from gpq_keras.config import GPQConfig
from gpq_keras.export import (
    CODEBOOK_SUFFIX,
    codebook_json,
    codebook_path,
    codebook_record,
    export_model,
)
from gpq_keras.files import TEMPORARY_PREFIX
from gpq_keras.model import load_gpq
from gpq_keras.retrieval import PQIndex, ProductQuantizer
from gpq_keras.retrieval.codes import unpack_codes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "export.md")
COLOURS = np.array([(30, 40, 210), (30, 200, 40), (220, 30, 30)], np.float64)
TIE = 1e-5  # a code may differ from the reference only where its two best scores are this close
FEATURE_RTOL = 1e-4


def _images(rng, n):
    """uint8 (n, 16, 16, 3): noisy images of three colours, and their classes."""
    labels = np.arange(n) % 3
    noise = rng.normal(0, 40, (n, *CONFIG.image_shape))
    images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def _doc_block(first_line):
    """The ```python block of docs/export.md whose first line is `first_line`."""
    with open(DOCS, encoding="utf-8") as fh:
        text = fh.read()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"docs/export.md has no python block starting with {first_line!r}")


def _run_doc_block(first_line, folder, monkeypatch):
    """Run the block in `folder` (its file names are relative) -> its variables."""
    monkeypatch.chdir(folder)
    scope = {}
    exec(compile(_doc_block(first_line), DOCS, "exec"), scope)  # noqa: S102 - our own docs
    return scope


# --- a small trained model and its exports --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the .keras path, the model loaded from it, a fixed uint8 batch): six training steps, so that
    batch norm has moved, then each sub-space's codewords set to the features of 8 of the batch's
    images (as a k-means start would), so that the codes spread over every codeword."""
    folder = tmp_path_factory.mktemp("export_formats")
    rng = np.random.default_rng(25)
    keras.utils.set_random_seed(25)
    model = GPQ(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for _ in range(6):
        labeled, labels = _images(rng, 12)
        unlabeled, _ = _images(rng, 12)
        model.train_on_batch({"labeled": labeled, "unlabeled": unlabeled}, labels)
    images = np.concatenate(  # the colours it saw, and noise
        [_images(rng, 24)[0], rng.integers(0, 256, (24, *CONFIG.image_shape), dtype=np.uint8)]
    )
    m, k, d = CONFIG.num_subspaces, CONFIG.num_codewords, CONFIG.subspace_dim
    features = model.encode(images).reshape(len(images), m, d)
    words = np.stack([features[rng.permutation(len(images))[:k], sub] for sub in range(m)], 1)
    model.quantizer.codewords.assign(words.reshape(k, m * d))
    path = folder / "model.keras"
    model.save(path)
    return path, load_gpq(path), images


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """{(format, mode): the export's path}: ONNX and TFLite in original mode by the command line,
    ONNX in the model's mode (consistent, the default) by `export_model`."""
    model_path, model, _ = trained
    folder = tmp_path_factory.mktemp("exported")
    paths = {}
    for fmt in ("onnx", "tflite"):
        out = folder / f"gpq.{fmt}"
        argv = ["export", "--model", model_path, "--format", fmt, "--output", out, "--mode"]
        assert cli.main([*map(str, argv), "original"]) == 0
        paths[fmt, "original"] = str(out)
    consistent = folder / "consistent" / "gpq.onnx"
    assert model.gpq_config.retrieval_mode == "consistent"
    assert export_model(model, consistent, "onnx") == (
        str(consistent),
        str(consistent) + CODEBOOK_SUFFIX,
    )
    paths["onnx", "consistent"] = str(consistent)
    return paths


def _run(fmt, path, inputs, name="images"):
    """{"features", "codes"} of the export at `path` on `inputs`, by onnxruntime or LiteRT."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        features, codes = session.run(["features", "codes"], {name: inputs})
        return {"features": features, "codes": codes}
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_path=path).get_signature_runner("serving_default")(**{name: inputs})
    return {"features": out["features"], "codes": out["codes"]}


def parity(model, mode, inputs, out):
    """(max relative feature error per item, number of differing codes) of an export's outputs
    `out` against `model.encode` and `ProductQuantizer`; an AssertionError for a differing code
    that is not a float tie (the two best scores within `TIE`)."""
    pq = ProductQuantizer.from_model(model, mode)
    features = model.encode(inputs)
    expected = pq.encode(features)
    got = out["codes"]
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert out["features"].dtype == np.float32 and out["features"].shape == features.shape
    errors = np.linalg.norm(out["features"] - features, axis=1) / np.linalg.norm(features, axis=1)
    assert errors.max() < FEATURE_RTOL, errors.max()
    # float64 scores of the reference features: a differing code must be a near tie of the best two
    m, d, k = pq.assignment_codebook.shape
    scores = np.einsum(
        "nmd,mdk->nmk",
        features.astype(np.float64).reshape(-1, m, d),
        pq.assignment_codebook.astype(np.float64),
    )
    for n, sub in zip(*np.nonzero(got != expected)):
        top = np.sort(scores[n, sub])[::-1]
        assert top[0] - top[1] < TIE, (n, sub, top[:2])
        assert scores[n, sub, got[n, sub]] >= top[1] - TIE  # one of the tied codewords
    return float(errors.max()), int((got != expected).sum())


@pytest.mark.parametrize(
    "fmt, mode", [("onnx", "original"), ("tflite", "original"), ("onnx", "consistent")]
)
def test_onnx_and_tflite_give_the_codes_and_features_of_encode(trained, exported, fmt, mode):
    _, model, images = trained
    out = _run(fmt, exported[fmt, mode], images)
    _, mismatches = parity(model, mode, images, out)
    assert mismatches <= 1  # a tie is rare: more would be a wrong graph
    # not one code for all: in original mode every codeword is used (Z' of consistent mode, a
    # softmax mix of Z, spreads less)
    assert len(np.unique(out["codes"], axis=0)) > (20 if mode == "original" else 4)
    with open(codebook_path(exported[fmt, mode]), encoding="utf-8") as fh:
        assert json.load(fh)["mode"] == mode


def test_the_exports_have_the_documented_names_and_types(exported):
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    session = onnxruntime.InferenceSession(exported["onnx", "original"])
    (images,) = session.get_inputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [16, 16, 3])
    assert {o.name: o.type for o in session.get_outputs()} == {
        "features": "tensor(float)",
        "codes": "tensor(uint8)",
    }
    signatures = Interpreter(model_path=exported["tflite", "original"]).get_signature_list()
    assert signatures == {
        "serving_default": {"inputs": ["images"], "outputs": ["codes", "features"]}
    }


@pytest.mark.parametrize("mode", ["original", "consistent"])
def test_the_codebook_json_reproduces_the_index_distances(
    trained, exported, mode, tmp_path, monkeypatch
):
    """The documented NumPy code (float64), fed the JSON and an export's outputs, gives the
    distances `PQIndex.search` gives for the same codes, in its order."""
    _, model, images = trained
    path = exported["onnx", mode]
    with open(codebook_path(path), encoding="utf-8") as fh:
        book = json.load(fh)
    assert book == codebook_record(model, mode, "onnx")
    assert book["fingerprint"] == model.fingerprint and book["normalize_queries"] == (
        mode == "consistent"
    )
    pq = ProductQuantizer.from_model(model, mode)
    centroids = np.asarray(book["codebook"])
    assert centroids.shape == (3, 8, 4)
    np.testing.assert_array_equal(centroids.astype(np.float32), pq.centroids)  # exact
    assert np.array_equal(centroids, centroids.astype(np.float32))  # float32 values, nothing lost

    out = _run("onnx", path, images)
    index = PQIndex.from_model(model, mode)
    index.add(out["codes"])
    queries = out["features"][:5]
    distances, ids = index.search(queries, k=index.ntotal)
    os.link(codebook_path(path), tmp_path / "gpq.onnx.codebook.json")  # the name the snippet reads
    docs = _run_doc_block(
        "# ADC distances from an export's features and its codebook JSON, with NumPy only",
        tmp_path,
        monkeypatch,
    )
    for query, found, dist in zip(queries, ids, distances):
        reference = docs["adc"](docs["lookup_table"](query), out["codes"])
        np.testing.assert_allclose(dist, reference[found], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(reference[found]) >= -1e-5)  # ranked by the reference distance
        tables = pq.lookup_tables(query[None])[0]
        np.testing.assert_allclose(docs["lookup_table"](query), tables, rtol=1e-5, atol=1e-5)


def test_a_model_on_embeddings_exports_to_both_formats(tmp_path):
    config = GPQConfig(
        num_subspaces=2, num_codewords=16, subspace_dim=4, num_classes=3, input_dim=10
    )
    model = GPQ(config, backbone=build_backbone("mlp", config, mlp_width=16))
    vectors = np.random.default_rng(3).normal(size=(20, 10)).astype(np.float32)
    for fmt in ("onnx", "tflite"):
        path, json_path = export_model(model, tmp_path / f"e.{fmt}", fmt, mode="original")
        parity(model, "original", vectors, _run(fmt, path, vectors, name="embeddings"))
        with open(json_path, encoding="utf-8") as fh:
            book = json.load(fh)
        assert book["inputs"] == {"name": "embeddings", "dtype": "float32", "shape": [None, 10]}
    assert sorted(os.listdir(tmp_path)) == [
        "e.onnx",
        "e.onnx.codebook.json",
        "e.tflite",
        "e.tflite.codebook.json",
    ]


# --- outputs: never replaced, wrong names refused ------------------------------------------------


def _gpq_fails(argv, capsys, *needles):
    """Run `gpq` -> its one line of error; an AssertionError unless it exits 2 naming `needles`."""
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(needle in lines[0] for needle in needles), lines
    return lines[0]


def test_existing_outputs_and_wrong_suffixes_are_refused_before_the_model_loads(tmp_path, capsys):
    model = tmp_path / "model.keras"
    model.write_text("never loaded: every refusal comes first")
    export = ["export", "--model", model]
    onnx = tmp_path / "gpq.onnx"
    onnx.write_bytes(b"mine")
    _gpq_fails([*export, "--format", "onnx", "--output", onnx], capsys, str(onnx), "already exists")
    assert onnx.read_bytes() == b"mine" and not os.path.exists(codebook_path(onnx))

    tflite = tmp_path / "gpq.tflite"
    (tmp_path / "gpq.tflite.codebook.json").write_text("{}")
    _gpq_fails(
        [*export, "--format", "tflite", "--output", tflite],
        capsys,
        "gpq.tflite.codebook.json already exists",
    )
    assert not tflite.exists() and (tmp_path / "gpq.tflite.codebook.json").read_text() == "{}"

    for fmt, output, needle in (
        ("onnx", "x.tflite", "ends with .onnx, not .tflite (format onnx)"),
        ("tflite", "x.onnx", "ends with .tflite, not .onnx"),
        ("tflite", "x", "ends with .tflite, not no suffix"),
        ("savedmodel", "x.onnx", "names an ONNX file, but the format is savedmodel"),
    ):
        line = _gpq_fails([*export, "--format", fmt, "--output", tmp_path / output], capsys, needle)
        assert line.startswith(f"gpq export: error: --output {tmp_path / output} ")
    (tmp_path / "folder.onnx").mkdir()
    _gpq_fails(
        [*export, "--format", "onnx", "--output", tmp_path / "folder.onnx"],
        capsys,
        "is a directory",
    )
    assert sorted(os.listdir(tmp_path)) == [
        "folder.onnx",
        "gpq.onnx",
        "gpq.tflite.codebook.json",
        "model.keras",
    ]


def test_the_python_api_refuses_the_same(tmp_path):
    model = GPQ(CONFIG)
    with pytest.raises(ValueError, match=r"format must be one of .*Received: format='keras'"):
        export_model(model, tmp_path / "a", "keras")
    with pytest.raises(ValueError, match=r"a\.onnx: it names an ONNX file"):
        export_model(model, tmp_path / "a.onnx")
    (tmp_path / "b.onnx.codebook.json").write_text("{}")
    with pytest.raises(ValueError, match=r"b\.onnx\.codebook\.json already exists"):
        export_model(model, tmp_path / "b.onnx", "onnx")
    with pytest.raises(ValueError, match="mode"):
        export_model(model, tmp_path / "c.onnx", "onnx", mode="nearest")
    assert os.listdir(tmp_path) == ["b.onnx.codebook.json"]


def test_another_backend_is_told_to_use_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setattr(keras.config, "backend", lambda: "jax")
    for fmt in ("onnx", "tflite", "savedmodel"):
        with pytest.raises(ValueError, match=r"export with KERAS_BACKEND=tensorflow \(the backend"):
            export_model(None, tmp_path / f"x.{fmt}", fmt)
    assert os.listdir(tmp_path) == []


def test_a_file_that_appears_meanwhile_is_never_replaced(tmp_path):
    target = tmp_path / "out.onnx"
    with pytest.raises(ValueError, match="already exists"):
        with export_module._new_file(str(target)) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"export")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's" and os.listdir(tmp_path) == ["out.onnx"]
    with export_module._new_file(str(tmp_path / "new.onnx")) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"export")
    assert (tmp_path / "new.onnx").read_bytes() == b"export"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(TEMPORARY_PREFIX)]


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import tensorflow as tf

    model = GPQ(CONFIG)

    def full_disk(record):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "codebook_json", full_disk)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, tmp_path / "a.onnx", "onnx")  # the ONNX file is removed again
    monkeypatch.undo()

    class FailingConverter:
        def convert(self):
            raise RuntimeError("converter failed")

    monkeypatch.setattr(
        tf.lite.TFLiteConverter, "from_saved_model", lambda path: FailingConverter()
    )
    with pytest.raises(RuntimeError, match="converter failed"):
        export_model(model, tmp_path / "b.tflite", "tflite")  # and its SavedModel folder
    assert os.listdir(tmp_path) == []


# --- the documented layouts -----------------------------------------------------------------------


def test_the_codebook_json_text_is_the_record(tmp_path):
    record = codebook_record(GPQ(CONFIG), "consistent", "tflite")
    text = codebook_json(record)
    assert json.loads(text) == record and text.endswith("}\n")
    assert text.count("\n") > 3 * 8  # one line per codeword: readable, not one long line
    assert set(record) >= {"codebook", "num_subspaces", "num_codewords", "mode", "fingerprint"}


@pytest.mark.parametrize("num_subspaces, num_codewords", [(3, 8), (5, 16), (4, 256), (7, 2)])
def test_the_documented_unpacking_reads_an_index_file(
    num_subspaces, num_codewords, tmp_path, monkeypatch
):
    rng = np.random.default_rng(num_codewords)
    codebook = rng.standard_normal((num_codewords, num_subspaces * 2)).astype(np.float32)
    codes = rng.integers(0, num_codewords, (37, num_subspaces)).astype(np.uint8)
    index = PQIndex(codebook, num_subspaces)
    index.add(codes, ids=np.arange(37) * 3 + 100)
    index.save(tmp_path / "index.npz")
    docs = _run_doc_block(
        "# unpack the codes of an index file with NumPy only", tmp_path, monkeypatch
    )
    assert docs["codes"].dtype == np.uint8
    np.testing.assert_array_equal(docs["codes"], codes)
    nbits = int(np.log2(num_codewords))
    np.testing.assert_array_equal(docs["codes"], unpack_codes(docs["packed"], num_subspaces, nbits))
    np.testing.assert_array_equal(docs["ids"], np.arange(37) * 3 + 100)
