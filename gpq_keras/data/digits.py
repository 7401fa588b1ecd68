"""The embedded default data: the 1,797 8x8 handwritten digits, as 32x32x3 uint8.

The arrays ship with the package as `digits.npz` (scikit-learn's copy of the UCI "Optical
Recognition of Handwritten Digits" test set; sources and licences in `DIGITS_LICENSE.txt`), so no
download and no scikit-learn are needed.
"""

from importlib import resources

import numpy as np

from gpq_keras.data.split import protocol_split

DATA_FILE = "digits.npz"
NUM_IMAGES = 1797
MAX_VALUE = 16  # the raw pixels count "on" pixels in 4x4 blocks: 0..16


def load_raw():
    """The packaged arrays as stored: images uint8 (1797, 8, 8) with values 0..16, labels int64
    (1797,)."""
    with (
        resources.files(__package__).joinpath(DATA_FILE).open("rb") as f,
        np.load(f, allow_pickle=False) as data,
    ):
        return data["images"], data["labels"]


def resize_bilinear(images, size):
    """Bilinear resize of images (N, H, W, C) to (N, *size, C) with half-pixel centres, float64
    (NumPy): `tf.image.resize(method="bilinear")` without TensorFlow; the same values when
    enlarging."""
    x = np.asarray(images, np.float64)
    for axis, size_out in ((1, size[0]), (2, size[1])):
        size_in = x.shape[axis]
        source = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
        low = np.floor(source)
        frac = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        low = low.astype(int)
        x = (
            np.take(x, low, axis=axis) * (1.0 - frac)
            + np.take(x, np.minimum(low + 1, size_in - 1), axis=axis) * frac
        )
    return x


def load_images(image_size=32):
    """All digits as uint8 (1797, image_size, image_size, 3) and int64 labels (1797,).

    Raw values 0..16 are scaled to 0..255, resized bilinearly (`resize_bilinear`) and repeated to 3
    channels.
    """
    raw, labels = load_raw()
    images = np.round(raw.astype(np.float64) * (255.0 / MAX_VALUE)).astype(
        np.uint8
    )  # 0..16 -> 0..255
    images = resize_bilinear(images[..., None], (image_size, image_size))
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, axis=-1)
    return images, labels.astype(np.int64)


CLASS_NAMES = tuple(str(d) for d in range(10))


def load_pool(image_size=32):
    """All 1,797 digits as one `gpq_keras.data.protocols.Pool` (`load_images` order, 10 classes
    named "0".."9", no train/test division: `train_count` None), named "digits"."""
    from gpq_keras.data.protocols import Pool

    images, labels = load_images(image_size)
    return Pool(images, labels, len(CLASS_NAMES), CLASS_NAMES, "digits")


def load_split(query_every=10, labeled_per_class=50):
    """The paper's protocol scaled down: 180 queries, 500 labeled, 1,117 unlabeled = database."""
    images, labels = load_images()
    split = protocol_split(
        images, labels, query_every=query_every, labeled_per_class=labeled_per_class, name="digits"
    )
    split.class_names = CLASS_NAMES
    return split
