"""The pixel contract of a GPQ model: what its images are and how its first layer normalises them.

A `GPQ` takes pixels (B, H, W, 3), uint8 or float in 0..255, and normalises them itself with the
original's per-channel statistics, `(x - CHANNEL_MEAN) / CHANNEL_STD`, in its first layer
(`pixel_normalization`). The input pipelines depend on this module, not the reverse: they pad pixels
with `PADDING_FILL` (the channel mean, which the normalisation makes 0, the original's padding) by
`augmentation_padding` pixels (4 at 32x32, the original's; an eighth of the side at other sizes) and
give normalised images with `normalize_array` for models saved before the model normalised.

```python
layer = pixel_normalization((32, 32, 3))  # keras.layers.Normalization, built for (None, 32, 32, 3)
check_image_batch(images, (32, 32, 3))  # ValueError unless images are (N, 32, 32, 3)
shown = denormalize(normalize_array(images))  # [0, 1] floats for display
```

Only NumPy is imported here; Keras only by `pixel_normalization`.
"""

import numpy as np

# Per-channel statistics the original normalises CIFAR-10 with (RGB, pixels in 0..255).
CHANNEL_MEAN = (125.642, 123.738, 114.46)
CHANNEL_STD = (63.01, 62.157, 66.94)
PADDING = 4  # pixels of border the augmentation pads at 32x32 (`augmentation_padding`)
PADDING_FILL = CHANNEL_MEAN  # the border's value in pixels: normalised, the original's 0


def augmentation_padding(height, width):
    """Pixels of border the augmentation pads on every side of an image (height, width) before its
    random crop back: max(1, min(height, width) // 8), the original's 4 at 32x32 (16 at 128, 28 at
    224), so the shifts are the same share of the image at every size."""
    return max(1, min(int(height), int(width)) // 8)


def padding_fill(normalized=False):
    """The augmentation's border value: `PADDING_FILL` (3 channel means) for pixels, 0.0 for
    normalised images (`normalized=True`)."""
    return 0.0 if normalized else PADDING_FILL


def normalize_array(images):
    """uint8 or float pixels (..., H, W, 3) -> float32 (x - mean) / std, the original's colour
    pre-processing (NumPy)."""
    return (
        (np.asarray(images, np.float32) - np.float32(CHANNEL_MEAN)) / np.float32(CHANNEL_STD)
    ).astype(np.float32)


def denormalize(images):
    """Inverse of `normalize_array`: normalised images (..., H, W, 3) -> floats in [0, 1] for
    display (NumPy)."""
    return np.clip((np.asarray(images, np.float32) * CHANNEL_STD + CHANNEL_MEAN) / 255.0, 0.0, 1.0)


def check_image_batch(images, image_shape):
    """Raise a ValueError unless `images` (N, H, W, C) have the model's `image_shape` (H, W, C)."""
    shape = tuple(np.shape(images)[1:])
    if shape != tuple(image_shape):
        raise ValueError(
            f"images of shape {shape} given, but the model expects {tuple(image_shape)}"
        )


def pixel_normalization(image_shape):
    """The model's first layer: `keras.layers.Normalization` of pixels with the channel statistics,
    (x - mean) / std per channel in float32 whatever the dtype policy, built for
    (None, *image_shape)."""
    import keras

    layer = keras.layers.Normalization(
        mean=list(CHANNEL_MEAN),
        variance=[s * s for s in CHANNEL_STD],
        name="pixel_normalization",
        dtype="float32",
    )
    layer.build((None, *image_shape))
    return layer


# keras.applications' "caffe" preprocessing (ResNet50's): BGR channel means of ImageNet, 0..255.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocess(images):
    """RGB pixels 0..255 (..., 3) -> float32 BGR minus ImageNet's BGR means, as
    `keras.applications.resnet50.preprocess_input` (mode "caffe"), in `keras.ops`: it takes NumPy
    arrays, backend tensors and symbolic `keras.KerasTensor`s (a functional model's graph)."""
    from keras import ops

    bgr = ops.flip(ops.cast(images, "float32"), axis=-1)
    return ops.subtract(bgr, np.asarray(CAFFE_MEAN_BGR, np.float32))
