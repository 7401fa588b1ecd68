"""Export a GPQ model as a TensorFlow SavedModel for serving: pixels in, features and PQ codes
out."""

import os

import keras
import tensorflow as tf

from gpq_keras.files import atomic_dir, check_output_path, display_path
from gpq_keras.retrieval import ProductQuantizer


def export_saved_model(model, path, mode=None):
    """Write a SavedModel directory at `path` whose `serving_default` signature maps uint8 pixels
    `images` (N, H, W, C) to `{"features": float32 (N, M*d), "codes": uint8 (N, M)}` (a model
    on embeddings: float32 `embeddings` (N, D)).

    `features` are the raw features F(x) (`model.encode`); `codes` are those of
    `ProductQuantizer.from_model(model, mode).encode(features)` (mode None: the config's
    `retrieval_mode`), computed in the graph: per sub-space the codeword of largest dot product with
    the intra-normalised codebook (`ProductQuantizer.assignment_codebook`), lowest index among equal
    ones. Loading needs TensorFlow only, not gpq_keras.

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
    if keras.config.backend() != "tensorflow":
        raise ValueError(
            f"a SavedModel is TensorFlow's format: export with KERAS_BACKEND=tensorflow (the "
            f"backend is {keras.config.backend()}; the .keras file itself loads on any backend)"
        )
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise _exists(path)
    check_output_path(path, "export", kind="dir", make_parents=True)
    cfg = model.gpq_config
    pq = ProductQuantizer.from_model(model, mode)
    m, d, k = pq.num_subspaces, pq.subspace_dim, pq.num_codewords
    assign = tf.constant(pq.assignment_codebook)  # (M, d, K), what `ProductQuantizer.encode` uses

    def serve(images):
        if not model.normalize_pixels:  # a model saved before it normalised its pixels itself
            from gpq_keras.data.tf_pipeline import normalize

            images = normalize(images)
        features = tf.cast(model(images, training=False), tf.float32)
        scores = tf.einsum("nmd,mdk->nmk", tf.reshape(features, [-1, m, d]), assign)  # (N, M, K)
        best = tf.reduce_max(scores, axis=-1, keepdims=True)
        index = tf.range(k, dtype=tf.int32)
        codes = tf.reduce_min(
            tf.where(scores == best, index, k - 1), axis=-1
        )  # lowest index of the max
        return {"features": features, "codes": tf.cast(codes, tf.uint8)}

    if model.takes_vectors:  # a model on embeddings takes float32 (N, D) `embeddings`
        spec = tf.TensorSpec([None, cfg.input_dim], tf.float32, name="embeddings")
    else:
        spec = tf.TensorSpec([None, *cfg.image_shape], tf.uint8, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[spec])
    try:
        with atomic_dir(path) as tmp:  # 0777 less the umask: a server's user can read it
            archive.write_out(tmp, verbose=False)
    except FileExistsError:  # appeared meanwhile (a rename would replace an empty directory)
        raise _exists(path) from None
    return path


def _exists(path):
    return ValueError(
        f"Cannot export the model: {display_path(path)} already exists (remove it or choose "
        "another path)"
    )
