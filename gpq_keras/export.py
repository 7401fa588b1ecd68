"""Export a GPQ model for serving: pixels in, features and PQ codes out, as a TensorFlow SavedModel,
an ONNX file or a TFLite (LiteRT) file, with the distance codebook beside it as JSON.

```python
export_model(model, "gpq.onnx", format="onnx")  # writes gpq.onnx and gpq.onnx.codebook.json
```

Every format takes uint8 images `images` (N, H, W, 3) (a model on embeddings: float32 `embeddings`
(N, D)) and gives `features` (float32 (N, M*d), `model.encode`) and `codes` (uint8 (N, M), those of
`ProductQuantizer.from_model(model, mode)`). The codebook JSON (`codebook_record`) holds what an app
needs to rank codes by asymmetric distance without Keras: see the docs page "Export: ONNX, TFLite
and SavedModel" (docs/export.md).
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np

from gpq_keras.config import L2_EPSILON
from gpq_keras.files import (
    atomic_dir,
    check_output_path,
    current_umask,
    display_path,
    sweep_temporaries,
    temporary_dir,
    temporary_prefix,
)
from gpq_keras.image_converter import CHANNEL_MEAN, CHANNEL_STD
from gpq_keras.retrieval import ProductQuantizer

FORMATS = ("savedmodel", "onnx", "tflite")
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite"}  # a SavedModel is a folder: no suffix
FORMAT_NAMES = {"savedmodel": "a SavedModel", "onnx": "an ONNX file", "tflite": "a TFLite file"}
CODEBOOK_SUFFIX = ".codebook.json"
CODEBOOK_FORMAT = "gpq_keras.codebook"
CODEBOOK_VERSION = 1


def codebook_path(path):
    """The codebook JSON written beside an export at `path`: `path + ".codebook.json"`."""
    return os.fspath(path).rstrip("/" + os.sep) + CODEBOOK_SUFFIX


def check_format(format):
    """`format` if it is one of `FORMATS`; a ValueError with the received value otherwise."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}. Received: format={format!r}")
    return format


def suffix_problem(path, format):
    """Why `path` is not a name for an export in `format` (one line, without the path), or None.

    An ONNX file's name ends with `.onnx`, a TFLite file's with `.tflite`; a SavedModel folder's
    name ends with neither (nor `.keras`, `.json`), which would be a `--format` left out.
    """
    name = os.fspath(path).rstrip("/" + os.sep).lower()
    suffix = SUFFIXES.get(check_format(format))
    if suffix is not None:
        if name.endswith(suffix):
            return None
        ending = os.path.splitext(name)[1]
        return (
            f"{FORMAT_NAMES[format]}'s name ends with {suffix}, not "
            f"{ending or 'no suffix'} (format {format})"
        )
    for other, suffix in SUFFIXES.items():
        if name.endswith(suffix):
            return f"names {FORMAT_NAMES[other]}, but the format is savedmodel (a folder)"
    if name.endswith((".keras", ".json", ".h5")):
        return f"ends with {os.path.splitext(name)[1]}; a SavedModel is a folder"
    return None


def check_export_path(path, format="savedmodel"):
    """Refuse, before any work, an export `path` gpq could not write in `format` -> the absolute
    path.

    A ValueError (one line, naming the path) when its name does not fit the format
    (`suffix_problem`), when it or its codebook JSON (`codebook_path`) already exists (an export
    never replaces a file or folder), or when it cannot be written (`check_output_path`: missing
    parent folders are made).
    """
    check_format(format)
    path = os.path.abspath(os.fspath(path))
    problem = suffix_problem(path, format)
    if problem:
        raise ValueError(f"Cannot export the model to {display_path(path)}: it {problem}")
    for target in (path, codebook_path(path)):
        if os.path.lexists(target):
            raise _exists(target)
    check_output_path(
        path, "export", kind="dir" if format == "savedmodel" else "file", make_parents=True
    )
    check_output_path(codebook_path(path), "export", make_parents=True)
    return path


def codebook_record(model, mode=None, format=None):
    """What an app needs to rank PQ codes of this model without Keras, as a JSON-ready dict.

    Keys: `format` ("gpq_keras.codebook"), `format_version` (1), `mode`, `num_subspaces` (M),
    `num_codewords` (K), `subspace_dim` (d), `nbits` (log2 K), `fingerprint` (`GPQ.fingerprint`,
    as an index built with the model records it), `normalize_queries` (bool) and
    `normalize_epsilon`, `codebook` (nested lists (M, K, d): `ProductQuantizer.centroids`, the
    codewords distances use), `inputs` and `outputs` (names, dtypes and shapes), `distance` (the
    formula in words) and `export_format` (the format written beside it, when given).

    The asymmetric distance of a query's features q (the export's `features`, float32 (M*d,)) to an
    item with `codes` c (M,) is `sum_m (1 - q_m . codebook[m][c_m])` with q_m the m-th sub-vector of
    q, intra-normalised first when `normalize_queries` (`"consistent"` mode:
    q_m / sqrt(max(|q_m|^2, normalize_epsilon))); `PQIndex.search` ranks by it.
    """
    pq = ProductQuantizer.from_model(model, mode)
    cfg = model.gpq_config
    m, k, d = pq.num_subspaces, pq.num_codewords, pq.subspace_dim
    if model.takes_vectors:
        inputs = {"name": "embeddings", "dtype": "float32", "shape": [None, cfg.input_dim]}
    else:
        inputs = {"name": "images", "dtype": "uint8", "shape": [None, *cfg.image_shape]}
    record = {
        "format": CODEBOOK_FORMAT,
        "format_version": CODEBOOK_VERSION,
        "mode": pq.mode,
        "num_subspaces": m,
        "num_codewords": k,
        "subspace_dim": d,
        "nbits": pq.nbits,
        "fingerprint": model.fingerprint,
        "normalize_queries": pq.mode == "consistent",
        "normalize_epsilon": L2_EPSILON,
        "distance": "sum_m (1 - q_m . codebook[m][code_m]), q_m the m-th of M sub-vectors of "
        "features (intra-normalised first when normalize_queries)",
        "inputs": inputs,
        "outputs": {
            "features": {"dtype": "float32", "shape": [None, m * d]},
            "codes": {"dtype": "uint8", "shape": [None, m]},
        },
        # float32 -> float64 is exact and JSON keeps a float64 exactly: float32(value) round-trips
        "codebook": np.asarray(pq.centroids, np.float64).tolist(),
    }
    if format is not None:
        record["export_format"] = check_format(format)
    return record


def export_model(model, path, format="savedmodel", mode=None):
    """Export `model` in `format` at `path` and its codebook JSON beside it -> (path, JSON path),
    absolute.

    `"savedmodel"`: the folder `path` (`export_saved_model`); `"onnx"`: the file `path`, ending with
    `.onnx` (`export_onnx`); `"tflite"`: the file `path`, ending with `.tflite` (`export_tflite`).
    The JSON `path + ".codebook.json"` holds `codebook_record(model, mode, format)`. Both are
    refused before any work when either exists, or when the name does not fit the format
    (`check_export_path`); each is written to a temporary and renamed into place without replacing
    anything, and the export is removed again when its JSON cannot be written. Needs
    KERAS_BACKEND=tensorflow.

    Args:
        model: a `GPQ`.
        path: str or path-like.
        format: one of `FORMATS`. Default `"savedmodel"`.
        mode: the retrieval mode of the codes and the codebook; None: the config's
            `retrieval_mode`.
    """
    check_backend(check_format(format))
    path = check_export_path(path, format)
    record = codebook_record(model, mode, format)  # a bad mode is refused before any writing
    writer = {"savedmodel": export_saved_model, "onnx": export_onnx, "tflite": export_tflite}
    writer[format](model, path, mode)
    try:
        _write_new_json(codebook_path(path), record)
    except BaseException:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
        raise
    return path, codebook_path(path)


def export_saved_model(model, path, mode=None):
    """Write a SavedModel directory at `path` whose `serving_default` signature maps uint8 pixels
    `images` (N, H, W, C) to `{"features": float32 (N, M*d), "codes": uint8 (N, M)}` (a model
    on embeddings: float32 `embeddings` (N, D)).

    `features` are the raw features F(x) (`model.encode`); `codes` are those of
    `ProductQuantizer.from_model(model, mode).encode(features)` (mode None: the config's
    `retrieval_mode`), computed in the graph: per sub-space the codeword of largest dot product with
    the intra-normalised codebook (`ProductQuantizer.assignment_codebook`), lowest index among equal
    ones. Loading needs TensorFlow only, not gpq_keras. (`export_model` writes the codebook JSON
    beside it as well.)

    The directory is written beside `path` (a temporary `.tmp-<pid>-...` folder, renamed into
    place; one that a killed export left there is swept by the next writer in that folder) and
    missing parent folders are made; an existing `path`, or an ancestor that is a file, is a
    ValueError, never overwritten. Returns the absolute path.

    ```python
    export_saved_model(model, "served")
    serve = tf.saved_model.load("served").signatures["serving_default"]
    out = serve(images=tf.constant(pixels, tf.uint8))  # out["features"], out["codes"]
    ```

    TF Serving:
    `docker run -p 8501:8501 -v $PWD/served:/models/gpq/1 -e MODEL_NAME=gpq tensorflow/serving`,
    then POST `{"instances": [[[[0,0,0],...]]]}` (one H x W x C pixel array per image) to
    `http://localhost:8501/v1/models/gpq:predict`.
    """
    check_backend("savedmodel")
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise _exists(path)
    check_output_path(path, "export", kind="dir", make_parents=True)
    assign = _assignment(model, mode)
    try:
        with atomic_dir(path) as tmp:  # 0777 less the umask: a server's user can read it
            _write_saved_model(model, assign, tmp)
    except FileExistsError:  # appeared meanwhile (a rename would replace an empty directory)
        raise _exists(path) from None
    return path


def export_onnx(model, path, mode=None):
    """Write an ONNX file at `path` (Keras' own export, through tf2onnx): input `images` uint8
    (N, H, W, C) (a model on embeddings: `embeddings` float32 (N, D)), outputs `features` float32
    (N, M*d) and `codes` uint8 (N, M), as `export_saved_model` computes them.

    Runs on onnxruntime (Python, C++, Java, C#, JavaScript in onnxruntime-web, mobile) without
    TensorFlow:

    ```python
    session = onnxruntime.InferenceSession("gpq.onnx")
    features, codes = session.run(["features", "codes"], {"images": pixels})
    ```

    The file is written to a temporary beside `path` and linked into place, never replacing an
    existing `path` (a ValueError). Returns the absolute path. Needs KERAS_BACKEND=tensorflow.
    """
    check_backend("onnx")
    path = _check_new_file(path)
    encoder = _Encoder(model, _assignment(model, mode), name="gpq_encoder")
    with _new_file(path) as tmp, _constant_normalization(model), warnings.catch_warnings():
        # Keras' patch of tf2onnx for NumPy 2 asks `hasattr(np, "object")`: a FutureWarning
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        encoder.export(tmp, format="onnx", input_signature=[_input_spec(model)], verbose=False)
        _check_onnx_inputs(tmp, _input_name(model))
    return path


def export_tflite(model, path, mode=None):
    """Write a TFLite (LiteRT) flat buffer at `path`, converted by the LiteRT converter
    (`tf.lite.TFLiteConverter.from_saved_model`) from the SavedModel of `export_saved_model` (made
    in a temporary folder): signature `serving_default`, input `images` uint8 (N, H, W, C) (a model
    on embeddings: `embeddings` float32 (N, D)), outputs `features` float32 (N, M*d) and `codes`
    uint8 (N, M). Float32 throughout: no quantisation.

    ```python
    from ai_edge_litert.interpreter import Interpreter
    run = Interpreter(model_path="gpq.tflite").get_signature_runner("serving_default")
    out = run(images=pixels)  # out["features"], out["codes"]
    ```

    The file is written to a temporary beside `path` and linked into place, never replacing an
    existing `path` (a ValueError). Returns the absolute path. Needs KERAS_BACKEND=tensorflow.
    """
    check_backend("tflite")
    import tensorflow as tf

    path = _check_new_file(path)
    assign = _assignment(model, mode)
    folder = temporary_dir(os.path.dirname(path))  # swept by the next writer if this one is killed
    try:
        _write_saved_model(model, assign, folder)
        flat_buffer = tf.lite.TFLiteConverter.from_saved_model(folder).convert()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with _new_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(flat_buffer)
    return path


# --- the graph: one for every format ----------------------------------------------------------


def _assignment(model, mode):
    """float32 (M, d, K): the intra-normalised codebook codes are assigned against."""
    return np.array(ProductQuantizer.from_model(model, mode).assignment_codebook, np.float32)


def _serving_outputs(model, assign, inputs):
    """{"features": float32 (N, M*d), "codes": uint8 (N, M)} of inputs, in `keras.ops` with
    NumPy constants (graph constants in every format)."""
    ops = keras.ops
    if not model.takes_vectors and not model.normalize_pixels:
        # a model saved before it normalised its pixels itself: `gpq_keras.data.normalize` here
        inputs = (ops.cast(inputs, "float32") - np.float32(CHANNEL_MEAN)) / np.float32(CHANNEL_STD)
    features = ops.cast(model(inputs, training=False), "float32")
    m, d, k = assign.shape
    scores = ops.einsum("nmd,mdk->nmk", ops.reshape(features, (-1, m, d)), assign)  # (N, M, K)
    best = ops.max(scores, axis=-1, keepdims=True)
    # the lowest index of the max, as NumPy's argmax; keras.ops.argmax emits ops ONNX lacks
    index = np.arange(k, dtype=np.int32)
    codes = ops.min(ops.where(scores == best, index, np.int32(k - 1)), axis=-1)
    return {"features": features, "codes": ops.cast(codes, "uint8")}


def _input_name(model):
    return "embeddings" if model.takes_vectors else "images"


def _input_spec(model):
    import tensorflow as tf

    cfg = model.gpq_config
    if model.takes_vectors:  # a model on embeddings takes float32 (N, D) `embeddings`
        return tf.TensorSpec([None, cfg.input_dim], tf.float32, name="embeddings")
    return tf.TensorSpec([None, *cfg.image_shape], tf.uint8, name="images")


def _write_saved_model(model, assign, folder):
    def serve(inputs):
        return _serving_outputs(model, assign, inputs)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[_input_spec(model)])
    archive.write_out(folder, verbose=False)


class _Encoder(keras.Model):
    """The exported computation as a Keras model, for Keras' ONNX export: inputs -> {"features",
    "codes"}."""

    def __init__(self, gpq, assign, **kwargs):
        super().__init__(**kwargs)
        self.gpq = gpq
        self._assign = assign  # a NumPy array: a constant of the graph, not a variable
        self.built = True  # every weight is the GPQ's, which exist

    def call(self, inputs):
        return _serving_outputs(self.gpq, self._assign, inputs)


@contextlib.contextmanager
def _constant_normalization(model):
    """For the block, the mean and variance of every `keras.layers.Normalization` in `model` (its
    pixel normalisation, an application's own preprocessing) as NumPy arrays.

    The layer keeps them as eager tensors, which a traced function captures and tf2onnx turns into
    extra inputs of the ONNX graph; NumPy arrays become constants. Restored afterwards.
    """
    saved = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            saved.append((layer, layer.mean, layer.variance))
    try:
        for layer, mean, variance in saved:
            layer.mean = np.asarray(keras.ops.convert_to_numpy(mean))
            layer.variance = np.asarray(keras.ops.convert_to_numpy(variance))
        yield
    finally:
        for layer, mean, variance in saved:
            layer.mean, layer.variance = mean, variance


def _check_onnx_inputs(path, name):
    """Raise a RuntimeError unless the ONNX graph at `path` takes exactly the input `name`."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if inputs != [name]:
        raise RuntimeError(
            f"the ONNX export takes the inputs {inputs}, not only {name!r}: a tensor the model "
            "captures was not made a constant (please report this with the model's backbone)"
        )


# --- files --------------------------------------------------------------------------------------


def check_backend(format):
    """A ValueError, naming KERAS_BACKEND=tensorflow, on another backend: every format is made
    through TensorFlow."""
    if keras.config.backend() != "tensorflow":
        what = {
            "savedmodel": "a SavedModel is TensorFlow's format",
            "onnx": "the ONNX export goes through TensorFlow (tf2onnx)",
            "tflite": "a TFLite file converts from a TensorFlow SavedModel",
        }[format]
        raise ValueError(
            f"{what}: export with KERAS_BACKEND=tensorflow (the backend is "
            f"{keras.config.backend()}; the .keras file itself loads on any backend)"
        )


def _check_new_file(path):
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise _exists(path)
    check_output_path(path, "export", make_parents=True)
    return path


@contextlib.contextmanager
def _new_file(path):
    """Yield a temporary path beside `path` (named as `gpq_keras.files.atomic_path` names its
    temporaries); link it to `path` when the block succeeds, else remove it.

    Unlike `atomic_path`, an existing `path` is never replaced: the hard link fails (a ValueError)
    when `path` appeared meanwhile. Where the file system has no hard links the temporary is
    renamed after a last check.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    sweep_temporaries(folder, legacy=False)
    handle, tmp = tempfile.mkstemp(
        prefix=temporary_prefix(), suffix=os.path.splitext(path)[1], dir=folder
    )
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            if exc.errno not in (
                errno.EPERM,
                errno.ENOTSUP,
                errno.EOPNOTSUPP,
                errno.EXDEV,
                errno.EMLINK,
            ):
                raise
            if os.path.lexists(path):  # no hard links here (FAT, some network file systems)
                raise _exists(path) from None
            os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def codebook_json(record):
    """The text of a codebook JSON: the fields indented, one line per codeword of `codebook`."""
    head = json.dumps({key: value for key, value in record.items() if key != "codebook"}, indent=2)
    subspaces = (
        "    [\n" + ",\n".join(f"      {json.dumps(word)}" for word in words) + "\n    ]"
        for words in record["codebook"]
    )
    return f'{head[:-2]},\n  "codebook": [\n' + ",\n".join(subspaces) + "\n  ]\n}\n"


def _write_new_json(path, record):
    with _new_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(codebook_json(record))


def _exists(path):
    return ValueError(
        f"Cannot export the model: {display_path(path)} already exists (remove it or choose "
        "another path)"
    )
