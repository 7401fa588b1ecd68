"""tf.data pipelines: the two-stream training input of `GPQ.fit` and the evaluation input.

```python
# endless; steps = one epoch of the labeled images
dataset, steps = train_dataset(split, batch_size=500, seed=0)
model.fit(dataset, steps_per_epoch=steps, epochs=300)
features = model.predict(eval_dataset(split.x_db))
```

Both give pixels, float32 in 0..255: a `GPQ` normalises them itself with the original's channel
statistics (its first layer). Images stay uint8 until a batch is gathered; then each batch is
augmented as the original does (random left-right flip, pad, random crop back to the image size),
all as batched TF ops. The padding is `image_converter.augmentation_padding` of the image size (the
original's 4 at 32x32, an eighth of the side otherwise). The original pads after normalising, with
0: here the padded border is the channel mean in pixels, which the model's normalisation makes that
same 0. `normalized=True` gives the normalised images instead, for models saved before the model
normalised (`GPQ(normalize_pixels=False)`).

Images may be arrays (held in the graph, gathered by index) or `ImageFiles`
(`gpq_keras.data.image_files`), read when a batch is drawn: `ImageFiles.read` in a `tf.py_function`
inside the same index-batch pipeline, so batch g is still a function of (seed, g), with
`STREAM_PARALLEL_BATCHES` batches read at a time and `STREAM_PREFETCH` ahead. Memory is bounded by
the batch and the prefetch, not by the collection. A bad file ends the stream with tf.data's error:
run the consumer (`fit`, `predict`) inside `image_files.reraise_file_errors()` to get the one-line
error naming the file (`GPQ.encode` does).

Embeddings (a 2-D float array (N, D), `Split.takes_vectors`) are gathered the same way and given
as they are, float32 (B, D): never augmented, never normalised; the batches' order is the
images'.
"""

import numpy as np
import tensorflow as tf

from gpq_keras.data.image_files import ImageFiles
from gpq_keras.data.split import check_training_input, is_vectors
from gpq_keras.image_converter import (
    CHANNEL_MEAN,
    CHANNEL_STD,
    PADDING,
    augmentation_padding,
    padding_fill,
)

__all__ = ["augment", "augment_batch", "eval_dataset", "normalize", "train_dataset"]
_ENDLESS = 2**62  # "for ever" for Dataset.range
STREAM_PARALLEL_BATCHES = 2  # batches of image files read at once (each decodes on every core)
STREAM_PREFETCH = 2  # batches of image files ready ahead of the consumer


def normalize(images):
    """uint8 (..., H, W, 3) -> float32 (x - mean) / std, the original's colour pre-processing (TF
    ops; `gpq_keras.image_converter.normalize_array` in NumPy)."""
    return (tf.cast(images, tf.float32) - CHANNEL_MEAN) / CHANNEL_STD


def augment_batch(images, seed, padding=PADDING, fill=0.0):
    """The original's augmentation of a batch (B, H, W, C), each image on its own draw.

    Flip left-right with probability 1/2, pad `padding` pixels (the original's 4; the pipelines
    pass `augmentation_padding(H, W)`) of value `fill` (a scalar or one
    value per channel; `gpq_keras.image_converter.padding_fill`) on every side, crop an (H, W)
    window at a uniform offset in [0, 2 * padding] per axis. `seed` is a stateless seed
    (shape (2,) int), so the same seed gives the same batch.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    flip = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seeds[1], minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None]  # (B, H) rows of the padded image to keep
    cols = offsets[:, 1:] + tf.range(width)[None]  # (B, W)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, H, W + 2p, C)
    out = tf.gather(out, cols, axis=2, batch_dims=1)  # (B, H, W, C)
    inside = ((rows >= padding) & (rows < height + padding))[:, :, None] & (
        (cols >= padding) & (cols < width + padding)
    )[:, None, :]  # (B, H, W): not the border
    return tf.where(inside[..., None], out, tf.cast(fill, out.dtype))


def augment(image, padding=PADDING, seed=None):
    """`augment_batch` for one image (H, W, C); a fresh random seed unless `seed` is given."""
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return augment_batch(tf.convert_to_tensor(image)[None], seed, padding)[0]


def _pass_batches(count, batch_size, seed, start_batch):
    """Endless index batches (batch_size,) int64 from batch `start_batch` on: pass p is a fresh
    permutation of range(count), seeded by (seed, p), cut into count // batch_size batches (the
    remainder dropped), so a batch never holds an index twice and never spans two passes."""
    per_pass = count // batch_size

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([seed, p])
        )
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: per_pass * batch_size], (per_pass, batch_size))
        )

    first = start_batch // per_pass
    return (
        tf.data.Dataset.range(first, _ENDLESS)
        .flat_map(one_pass)
        .skip(start_batch - first * per_pass)
    )


def train_dataset(split, batch_size=500, seed=None, augmented=True, start_step=0, normalized=False):
    """Endless `({"labeled": x_l, "unlabeled": x_u}, y_l)` batches of float32 pixels, each stream
    shuffled on its own (`normalized=True`: normalised images, for `GPQ(normalize_pixels=False)`
    models).

    Both streams are drawn at `batch_size` (capped at the smaller set's size), as the original
    trains. Every pass over a stream is a fresh permutation and a batch never holds the same image
    twice. Batch g is a function of (seed, g) alone, shuffles and augmentation included:
    `start_step=g` starts the stream there, which is how an interrupted run resumes with the data it
    would have seen.

    Either stream may be `ImageFiles`, read a batch at a time as it is drawn (see the module
    docstring); augmentation pads `augmentation_padding(H, W)` pixels (4 at 32x32). A stream of
    embeddings (N, D) gives float32 (B, D) rows as they are: `augmented` and `normalized` apply to
    images only.

    Returns (dataset, steps_per_epoch) with steps_per_epoch = len(labeled) // batch_size
    (at least 1), the original's epoch: one pass over the labeled images.

    Raises ValueError (one line) for labels that cannot train (`check_training_labels`: ids outside
    [0, num_classes), fewer than 2 classes) and for empty training sets.
    """
    batch_size = check_training_input(split, batch_size, start_step)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    gather_l, gather_u = (_gatherer(x) for x in (split.x_labeled, split.x_unlabeled))
    y_l = tf.constant(split.y_labeled)
    vectors = [is_vectors(x) for x in (split.x_labeled, split.x_unlabeled)]
    paddings = [
        None if v else augmentation_padding(*x.shape[1:3])
        for x, v in zip((split.x_labeled, split.x_unlabeled), vectors)
    ]
    streams = (
        tf.data.Dataset.range(start_step, _ENDLESS),  # the global step: the augmentation's seed
        _pass_batches(len(split.x_labeled), batch_size, seed, start_step),
        _pass_batches(len(split.x_unlabeled), batch_size, seed + 1, start_step),
    )

    to_input, fill = (normalize if normalized else _pixels), padding_fill(normalized)

    def prepare(step, labeled, unlabeled):
        images = [
            _pixels(gather(index)) if v else to_input(gather(index))
            for gather, index, v in (
                (gather_l, labeled, vectors[0]),
                (gather_u, unlabeled, vectors[1]),
            )
        ]
        if augmented and not all(vectors):
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.cast(seed, tf.int64) + 2, step]), 2
            )
            images = [
                x if padding is None else augment_batch(x, s, padding, fill=fill)
                for x, s, padding in zip(images, tf.unstack(seeds), paddings)
            ]
        return {"labeled": images[0], "unlabeled": images[1]}, tf.gather(y_l, labeled)

    streamed = any(isinstance(x, ImageFiles) for x in (split.x_labeled, split.x_unlabeled))
    parallel, prefetch = (
        (STREAM_PARALLEL_BATCHES, STREAM_PREFETCH) if streamed else (tf.data.AUTOTUNE,) * 2
    )
    ds = tf.data.Dataset.zip(streams).map(prepare, num_parallel_calls=parallel)
    # Under a multi-worker strategy each worker takes its replicas' slices of every global batch.
    ds = ds.with_options(_auto_shard(tf.data.experimental.AutoShardPolicy.DATA))
    return ds.prefetch(prefetch), max(1, len(split.x_labeled) // batch_size)


def _gatherer(images):
    """A function of an index batch (B,) int64 -> uint8 images (B, H, W, 3) (or embeddings
    (B, D)) of `images`: an array held as a constant and gathered, or `ImageFiles` read then
    (`tf.py_function`, shape set)."""
    if not isinstance(images, ImageFiles):
        held = tf.constant(images)
        return lambda index: tf.gather(held, index)
    shape = images.shape[1:]

    def gather(index):
        batch = tf.py_function(lambda i: images.read(i.numpy()), [index], tf.uint8)
        batch.set_shape(index.shape.concatenate(shape))
        return batch

    return gather


def _auto_shard(policy):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return options


def _pixels(images):
    return tf.cast(images, tf.float32)


def eval_dataset(images, batch_size=500, normalized=False):
    """Un-augmented batches of images (N, H, W, C) for `predict`, in order, as float32 pixels;
    embeddings (N, D) give float32 (B, D) batches as they are (`normalized` ignored).

    `images` may be `ImageFiles`: each batch is read when drawn (`STREAM_PARALLEL_BATCHES` at once,
    `STREAM_PREFETCH` ahead), so memory is bounded by the batch; a bad file ends the stream (run
    `predict` inside `image_files.reraise_file_errors()` for the error naming it).

    `normalized=True` is the contract of models saved before the model normalised
    (`GPQ(normalize_pixels=False)`): uint8 images are normalised (`normalize`), float images are
    taken as normalised already. Under a multi-worker strategy each worker encodes its replicas'
    slices of every batch and `predict` gathers the features of all, in order."""
    if isinstance(images, ImageFiles):
        ds = _file_batches(images, batch_size)
        legacy_uint8, prefetch = normalized, STREAM_PREFETCH
    else:
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        legacy_uint8 = normalized and np.asarray(images).dtype == np.uint8
        prefetch = tf.data.AUTOTUNE
    ds = ds.map(normalize if legacy_uint8 else _pixels, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(_auto_shard(tf.data.experimental.AutoShardPolicy.DATA)).prefetch(
        prefetch
    )


def _file_batches(files, batch_size):
    """uint8 batches (B, H, W, 3) of `ImageFiles`, in order, each read when drawn."""
    count, shape = len(files), files.shape[1:]

    def read(start):
        start = int(start)
        return files.read(np.arange(start, min(start + batch_size, count)))

    def batch(start):
        images = tf.py_function(read, [start], tf.uint8)
        images.set_shape([None, *shape])
        return images

    return tf.data.Dataset.range(0, count, batch_size).map(
        batch, num_parallel_calls=STREAM_PARALLEL_BATCHES
    )
