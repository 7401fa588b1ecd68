"""The NumPy input pipeline: `GPQ.fit`'s two-stream batches from a `keras.utils.PyDataset`, without
TensorFlow.

It gives what the tf.data pipeline (`gpq_keras.data.tf_pipeline`) gives, for Keras backends running
without TensorFlow (JAX): endless `({"labeled": x_l, "unlabeled": x_u}, y_l)` batches of float32
pixels, each stream a fresh permutation per pass, batch g a function of (seed, g) alone, and the
original's augmentation (random left-right flip, pad `image_converter.augmentation_padding` pixels:
4 at 32x32, random crop back) drawn per image. The draws come from NumPy's generator, not
TensorFlow's, so the two pipelines give batches of the same distribution but not the same batches.

Images may be arrays or `ImageFiles` (`gpq_keras.data.image_files`), read when a batch is drawn
(`image_files.take`), so memory is bounded by the batch and Keras' queue of batches, not by the
collection. Keras' TensorFlow backend runs a `PyDataset` through tf.data, which wraps a bad file's
error: run `fit`/`predict` inside `image_files.reraise_file_errors()` for the one naming the file.
Embeddings (a 2-D float array (N, D)) give their rows as float32 (B, D), never augmented or
normalised.

```python
dataset, steps = train_pydataset(split, batch_size=500, seed=0)
model.fit(dataset, steps_per_epoch=steps, epochs=300)
features = model.predict(eval_pydataset(split.x_db))
```
"""

import keras
import numpy as np

from gpq_keras.data.image_files import ImageFiles, take
from gpq_keras.data.split import check_training_input, is_vectors
from gpq_keras.image_converter import (
    PADDING,
    augmentation_padding,
    normalize_array,
    padding_fill,
)

STREAM_WORKERS = 2  # threads reading the batches of `ImageFiles` ahead of `predict`
STREAM_QUEUE = 2  # batches of `ImageFiles` waiting, read, at most


def augment_batch(images, rng, padding=PADDING, fill=0.0):
    """The original's augmentation of a batch (B, H, W, C) with NumPy's generator `rng`, each image
    on its own draw: flip left-right with probability 1/2, pad `padding` pixels (the original's 4;
    the pipeline passes `augmentation_padding(H, W)`) of value `fill` (a scalar or one per channel)
    on every side, crop an (H, W) window at a uniform offset in
    [0, 2 * padding] per axis."""
    images = np.asarray(images)
    batch, height, width = images.shape[:3]
    flip = rng.random(batch) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    padded = np.empty(
        (batch, height + 2 * padding, width + 2 * padding, images.shape[3]), images.dtype
    )
    padded[...] = np.asarray(fill, images.dtype)
    padded[:, padding : padding + height, padding : padding + width] = images
    offsets = rng.integers(0, 2 * padding + 1, size=(batch, 2))
    rows = offsets[:, :1] + np.arange(height)  # (B, H) rows of the padded image to keep
    cols = offsets[:, 1:] + np.arange(width)  # (B, W)
    return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def pass_batch(count, batch_size, seed, step):
    """Indices (batch_size,) of batch `step` of an endless stream over range(count): pass p is a
    fresh permutation seeded by (seed, p), cut into count // batch_size batches (the remainder
    dropped)."""
    per_pass = count // batch_size
    p, b = divmod(step, per_pass)
    order = np.random.default_rng([seed, p]).permutation(count)
    return order[b * batch_size : (b + 1) * batch_size]


class TwoStreamBatches(keras.utils.PyDataset):
    """Endless `({"labeled": x_l, "unlabeled": x_u}, y_l)` batches of float32 pixels, or of
    embeddings as they are (see the module docstring); item i is global step `start_step + i`.
    Made by `train_pydataset`."""

    def __init__(
        self, split, batch_size, seed, augmented=True, start_step=0, normalized=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.split, self.batch_size, self.seed = split, int(batch_size), int(seed)
        self.augmented, self.start_step, self.normalized = (
            bool(augmented),
            int(start_step),
            bool(normalized),
        )

    @property
    def num_batches(self):
        return None  # endless: fit takes steps_per_epoch

    def __getitem__(self, index):
        step = self.start_step + int(index)
        split, size = self.split, self.batch_size
        labeled = pass_batch(len(split.x_labeled), size, self.seed, step)
        unlabeled = pass_batch(len(split.x_unlabeled), size, self.seed + 1, step)
        images = [take(split.x_labeled, labeled), take(split.x_unlabeled, unlabeled)]
        vectors = [is_vectors(x) for x in (split.x_labeled, split.x_unlabeled)]
        images = [
            normalize_array(x) if self.normalized and not v else np.asarray(x, np.float32)
            for x, v in zip(images, vectors)
        ]
        if self.augmented and not all(vectors):
            fill = padding_fill(self.normalized)
            rng = np.random.default_rng([self.seed + 2, step])
            images = [
                x if v else augment_batch(x, rng, augmentation_padding(*x.shape[1:3]), fill=fill)
                for x, v in zip(images, vectors)
            ]
        return {"labeled": images[0], "unlabeled": images[1]}, np.asarray(split.y_labeled)[labeled]


def train_pydataset(
    split, batch_size=500, seed=None, augmented=True, start_step=0, normalized=False, **kwargs
):
    """`gpq_keras.data.train_dataset` as a `keras.utils.PyDataset` -> (dataset, steps_per_epoch);
    `kwargs` (workers, use_multiprocessing, max_queue_size) go to `PyDataset`. Same arguments,
    checks and epoch."""
    batch_size = check_training_input(split, batch_size, start_step)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    dataset = TwoStreamBatches(split, batch_size, seed, augmented, start_step, normalized, **kwargs)
    return dataset, max(1, len(split.x_labeled) // batch_size)


class ArrayBatches(keras.utils.PyDataset):
    """Un-augmented float32 batches of images (N, H, W, C) or embeddings (N, D), in order, for
    `predict` (the NumPy `eval_dataset`): pixels, or with `normalized=True` uint8 images
    normalised (`normalize_array`) and float images (and embeddings) taken as they are.
    `ImageFiles` are read a batch at a time, as each is drawn."""

    def __init__(self, images, batch_size=500, normalized=False, **kwargs):
        super().__init__(**kwargs)
        self.images, self.batch_size = images, int(batch_size)
        dtype = images.dtype if isinstance(images, ImageFiles) else np.asarray(images[:1]).dtype
        self.normalize = normalized and dtype == np.uint8

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index):
        batch = self.images[index * self.batch_size : (index + 1) * self.batch_size]
        if isinstance(batch, ImageFiles):  # read now
            batch = batch.read()
        return normalize_array(batch) if self.normalize else np.asarray(batch, np.float32)


def eval_pydataset(images, batch_size=500, normalized=False, **kwargs):
    """`gpq_keras.data.eval_dataset` as a `keras.utils.PyDataset`: an `ArrayBatches` of images
    (N, H, W, C) or `ImageFiles`, float32 batches (B, H, W, C) in order; `kwargs` go to `PyDataset`
    (for `ImageFiles` the defaults are 2 worker threads and a queue of 2 batches: files are read
    ahead of `predict`, and at most that many batches wait)."""
    if isinstance(images, ImageFiles):
        kwargs = {"workers": STREAM_WORKERS, "max_queue_size": STREAM_QUEUE, **kwargs}
    return ArrayBatches(images, batch_size, normalized=normalized, **kwargs)
