"""The model's pixel contract (`gpq_keras.image_converter`) against a NumPy float64 reference."""

import numpy as np
import pytest

from gpq_keras import image_converter
from gpq_keras.image_converter import (
    CHANNEL_MEAN,
    CHANNEL_STD,
    check_image_batch,
    denormalize,
    normalize_array,
    padding_fill,
    pixel_normalization,
)

MEAN, STD = np.array(CHANNEL_MEAN, np.float64), np.array(CHANNEL_STD, np.float64)


def pixels(shape=(7, 5, 6, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_normalize_and_denormalize_against_float64():
    images = pixels()
    normalised = normalize_array(images)
    assert normalised.dtype == np.float32 and normalised.shape == images.shape
    np.testing.assert_allclose(normalised, (images - MEAN) / STD, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(normalize_array(images.astype(np.float64)), normalised)
    shown = denormalize(normalised)
    np.testing.assert_allclose(shown, images / 255.0, atol=1e-6)  # the round trip
    assert shown.min() >= 0.0 and shown.max() <= 1.0
    np.testing.assert_array_equal(denormalize(np.full((1, 3), 1e3)), 1.0)  # clipped for display


def test_the_padding_fill_is_the_original_zero_once_normalised():
    assert padding_fill() == image_converter.PADDING_FILL == CHANNEL_MEAN
    assert padding_fill(normalized=True) == 0.0 and image_converter.PADDING == 4
    np.testing.assert_allclose(normalize_array(np.float32(padding_fill())), 0.0, atol=1e-6)


def test_the_first_layer_normalises_as_normalize_array():
    layer = pixel_normalization((6, 5, 3))
    assert layer.name == "pixel_normalization" and layer.built
    assert layer.dtype_policy.name == "float32" and layer.compute_dtype == "float32"
    images = pixels((4, 6, 5, 3), seed=1)
    out = np.asarray(layer(images.astype(np.float32)))
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, normalize_array(images), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out, (images - MEAN) / STD, rtol=1e-6, atol=1e-5)


def test_check_image_batch_names_both_shapes():
    check_image_batch(pixels((2, 8, 8, 3)), (8, 8, 3))
    check_image_batch(pixels((2, 8, 8, 3)), [8, 8, 3])
    with pytest.raises(ValueError) as info:
        check_image_batch(pixels((2, 8, 9, 3)), (8, 8, 3))
    assert str(info.value) == "images of shape (8, 9, 3) given, but the model expects (8, 8, 3)"
