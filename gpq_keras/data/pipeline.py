"""tf.data pipelines: the two-stream training input of `GPQ.fit` and the evaluation input."""

import numpy as np
import tensorflow as tf

# Per-channel statistics the original normalises CIFAR-10 with.
CHANNEL_MEAN = (125.642, 123.738, 114.46)
CHANNEL_STD = (63.01, 62.157, 66.94)


def normalize(images):
    """uint8 (..., H, W, 3) -> float32 (x - mean) / std, the original's colour pre-processing."""
    return (tf.cast(images, tf.float32) - CHANNEL_MEAN) / CHANNEL_STD


def denormalize(images):
    """Inverse of `normalize`, to [0, 1] floats for display (NumPy)."""
    return np.clip((np.asarray(images, np.float32) * CHANNEL_STD + CHANNEL_MEAN) / 255.0, 0.0, 1.0)


def augment(image, padding=4):
    """The original's augmentation of one image (H, W, C): random left-right flip, zero-pad, random crop."""
    shape = tf.shape(image)
    image = tf.image.random_flip_left_right(image)
    image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.random_crop(image, shape)


def _stream(images, batch_size, seed, augmented):
    """Endless shuffled, (augmented,) normalised batches of images, or of (images, labels) pairs."""
    count = len(tf.nest.flatten(images)[0])
    ds = tf.data.Dataset.from_tensor_slices(images).cache().shuffle(count, seed=seed).repeat()

    def prepare(x):
        return normalize(augment(x) if augmented else x)

    if isinstance(images, tuple):
        ds = ds.map(lambda x, y: (prepare(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True)


def train_dataset(split, batch_size=500, seed=None, augmented=True):
    """Endless `({"labeled": x_l, "unlabeled": x_u}, y_l)` batches, each stream shuffled on its own.

    Returns (dataset, steps_per_epoch) with steps_per_epoch = len(labeled) // batch_size (at least 1),
    the original's epoch.
    """
    if not split.has_training_data:
        raise ValueError(f"{split.name}: no labeled/unlabeled training images in this data")
    batch_size = min(batch_size, len(split.x_labeled), len(split.x_unlabeled))
    labeled = _stream((split.x_labeled, split.y_labeled), batch_size, seed, augmented)
    unlabeled = _stream(split.x_unlabeled, batch_size, None if seed is None else seed + 1, augmented)
    ds = tf.data.Dataset.zip((labeled, unlabeled)).map(
        lambda lab, x_u: ({"labeled": lab[0], "unlabeled": x_u}, lab[1]))
    return ds.prefetch(tf.data.AUTOTUNE), max(1, len(split.x_labeled) // batch_size)


def eval_dataset(images, batch_size=500):
    """Normalised, un-augmented batches of images for `predict`."""
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
