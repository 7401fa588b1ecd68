"""The embedded default data: scikit-learn's digits (1,797 8x8 images) as 32x32x3 uint8."""

import numpy as np

from gpq_keras.data.split import protocol_split


def load_images(image_size=32):
    """All digits as uint8 (1797, image_size, image_size, 3) and int labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    import tensorflow as tf

    images = tf.image.resize(images[..., None], (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, axis=-1)
    return images, digits.target.astype(np.int64)


def load_split(query_every=10, labeled_per_class=50):
    """The paper's protocol scaled down: 180 queries, 500 labeled, 1,117 unlabeled = database."""
    images, labels = load_images()
    split = protocol_split(images, labels, query_every=query_every,
                           labeled_per_class=labeled_per_class, name="digits")
    split.class_names = tuple(str(d) for d in range(10))
    return split
