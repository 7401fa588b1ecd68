"""tf.data pipelines: the two-stream training input of `GPQ.fit` and the evaluation input.

```python
dataset, steps = train_dataset(split, batch_size=500, seed=0)  # endless; steps = one epoch
model.fit(dataset, steps_per_epoch=steps, epochs=300)
features = model.predict(eval_dataset(split.x_db))
```

Images stay uint8 until a batch is gathered; then each batch is normalised with the original's channel
statistics and augmented as the original does (random left-right flip, zero-pad 4, random crop back to
the image size), all as batched TF ops. As in the original, padding happens after normalisation, so the
padded border is 0 in normalised units (the channel mean in pixels).
"""

import numpy as np
import tensorflow as tf

# Per-channel statistics the original normalises CIFAR-10 with.
CHANNEL_MEAN = (125.642, 123.738, 114.46)
CHANNEL_STD = (63.01, 62.157, 66.94)
PADDING = 4


def normalize(images):
    """uint8 (..., H, W, 3) -> float32 (x - mean) / std, the original's colour pre-processing."""
    return (tf.cast(images, tf.float32) - CHANNEL_MEAN) / CHANNEL_STD


def denormalize(images):
    """Inverse of `normalize`, to [0, 1] floats for display (NumPy)."""
    return np.clip((np.asarray(images, np.float32) * CHANNEL_STD + CHANNEL_MEAN) / 255.0, 0.0, 1.0)


def augment_batch(images, seed, padding=PADDING):
    """The original's augmentation of a batch (B, H, W, C), each image on its own draw.

    Flip left-right with probability 1/2, zero-pad `padding` pixels on every side, crop an (H, W) window
    at a uniform offset in [0, 2 * padding] per axis. `seed` is a stateless seed (shape (2,) int), so the
    same seed gives the same batch.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    flip = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seeds[1], minval=0, maxval=2 * padding + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None]  # (B, H) rows of the padded image to keep
    cols = offsets[:, 1:] + tf.range(width)[None]  # (B, W)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, H, W + 2p, C)
    return tf.gather(out, cols, axis=2, batch_dims=1)  # (B, H, W, C)


def augment(image, padding=PADDING, seed=None):
    """`augment_batch` for one image (H, W, C); a fresh random seed unless `seed` is given."""
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return augment_batch(tf.convert_to_tensor(image)[None], seed, padding)[0]


def _stream(arrays, batch_size, seed, augmented):
    """Endless batches of `arrays` (images first), reshuffled every pass, normalised (and augmented).

    Shuffles indices, not images, so no copy of the images sits in a shuffle buffer; each batch is one
    `tf.gather` from the arrays held as tensors.
    """
    tensors = tuple(tf.constant(a) for a in arrays)
    count = len(arrays[0])
    indices = (tf.data.Dataset.range(count)
               .shuffle(count, seed=seed, reshuffle_each_iteration=True)
               .repeat()
               .batch(batch_size, drop_remainder=True))
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)

    def prepare(index, batch_seed):
        images = normalize(tf.gather(tensors[0], index))
        if augmented:
            images = augment_batch(images, batch_seed)
        return (images,) + tuple(tf.gather(t, index) for t in tensors[1:])

    return tf.data.Dataset.zip((indices, seeds)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(split, batch_size=500, seed=None, augmented=True):
    """Endless `({"labeled": x_l, "unlabeled": x_u}, y_l)` batches, each stream shuffled on its own.

    Both streams are drawn at `batch_size` (capped at the smaller set's size), as the original trains.
    Returns (dataset, steps_per_epoch) with steps_per_epoch = len(labeled) // batch_size (at least 1),
    the original's epoch.
    """
    if not split.has_training_data:
        raise ValueError(f"{split.name}: no labeled/unlabeled training images in this data")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; received batch_size={batch_size}")
    batch_size = min(batch_size, len(split.x_labeled), len(split.x_unlabeled))
    labeled = _stream((split.x_labeled, split.y_labeled), batch_size, seed, augmented)
    unlabeled = _stream((split.x_unlabeled,), batch_size, None if seed is None else seed + 1, augmented)
    ds = tf.data.Dataset.zip((labeled, unlabeled)).map(
        lambda lab, unl: ({"labeled": lab[0], "unlabeled": unl[0]}, lab[1]))
    return ds.prefetch(tf.data.AUTOTUNE), max(1, len(split.x_labeled) // batch_size)


def eval_dataset(images, batch_size=500):
    """Normalised, un-augmented batches of images for `predict`, in order."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
