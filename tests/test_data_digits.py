"""The packaged digits (`gpq_keras/data/digits.npz`): the raw file's integrity, the images made from
it."""

import hashlib
from importlib import resources

import numpy as np
import pytest

from gpq_keras.data import digits

# sha256 of the raw arrays' bytes (C order) as generated once from scikit-learn's `load_digits()`.
IMAGES_SHA256 = "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3"
LABELS_SHA256 = "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21"
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_raw_file_is_the_1797_digits_unchanged():
    with (
        resources.files("gpq_keras.data").joinpath("digits.npz").open("rb") as f,
        np.load(f, allow_pickle=False) as data,
    ):
        assert sorted(data.files) == ["images", "labels"]
    images, labels = digits.load_raw()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 16  # counts of "on" pixels in 4x4 blocks
    assert np.bincount(labels, minlength=10).tolist() == CLASS_COUNTS and sum(CLASS_COUNTS) == 1797
    assert hashlib.sha256(images.tobytes()).hexdigest() == IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == LABELS_SHA256


def test_license_ships_next_to_the_data():
    text = (
        resources.files("gpq_keras.data").joinpath("DIGITS_LICENSE.txt").read_text(encoding="utf-8")
    )
    for needle in (
        "Optical Recognition of Handwritten Digits",
        "Alpaydin",
        "Kaynak",
        "CC BY 4.0",
        "BSD 3-Clause",
        "scikit-learn",
        "unchanged",
    ):
        assert needle in text


def test_load_images_scales_resizes_and_repeats_the_raw_digits():
    raw, raw_labels = digits.load_raw()
    images, labels = digits.load_images(
        image_size=8
    )  # same size: the bilinear resize is the identity
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    scaled = np.round(raw * (255 / 16)).astype(np.uint8)
    np.testing.assert_array_equal(images, np.repeat(scaled[..., None], 3, axis=-1))
    np.testing.assert_array_equal(labels, raw_labels)
    big, _ = digits.load_images()
    assert big.shape == (1797, 32, 32, 3) and big.dtype == np.uint8
    assert big.max() == 255 and (big[..., 0] == big[..., 2]).all()


@pytest.mark.parametrize("size", [16, 32, 64])
def test_the_numpy_resize_is_tensorflows_bilinear_resize(size):
    """Digits load without TensorFlow; enlarged, they are `tf.image.resize`'s to the last bit
    (before rounding), so models and figures trained on them before stay reproducible."""
    import tensorflow as tf

    raw, _ = digits.load_raw()
    scaled = np.round(raw * (255 / 16)).astype(np.uint8)[..., None]
    expected = tf.image.resize(scaled, (size, size), method="bilinear").numpy()
    np.testing.assert_allclose(
        digits.resize_bilinear(scaled, (size, size)), expected, rtol=0, atol=1e-4
    )
    images, _ = digits.load_images(size)
    np.testing.assert_array_equal(
        images[..., 0], np.clip(np.round(expected[..., 0]), 0, 255).astype(np.uint8)
    )
