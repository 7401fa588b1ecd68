"""The original GPQ feature extractor F: ten VGG-16 conv layers with a two-scale pooled head."""

import keras

# The ten conv -> batch norm -> ReLU blocks in network order: (stage, conv layer, batch-norm layer).
CONV_BLOCKS = (
    (0, "conv0", "batch0"),
    (0, "conv0_1", "batch0_1"),
    (1, "conv1", "batch1"),
    (1, "conv1_1", "batch1_1"),
    (2, "conv2", "batch2"),
    (2, "conv2_1", "batch2_1"),
    (2, "conv2_2", "batch2_2"),
    (3, "conv3", "batch3"),
    (3, "conv3_1", "batch3_1"),
    (3, "conv3_2", "batch3_2"),
)
FEATURE_LAYER = "feature_vector"  # the dense layer that maps the two-scale pooled vector to M * d


@keras.saving.register_keras_serializable(package="gpq_keras")
class VGGBackbone(keras.Model):
    """F: conv(3x3, SAME) -> batch norm -> ReLU, x10, in four stages, then a two-scale head.

    Stages of (2, 2, 3, 3) convs with `filters` channels; 2x2 max pools after stages 0-2. The head
    concatenates [global-avg-pool(stage 3), global-avg-pool(pooled stage 2)] and maps it to `feature_dim`
    with a dense layer. Returns raw (un-normalised) features (B, feature_dim).

    ```python
    backbone = VGGBackbone(feature_dim=144)
    features = backbone(np.zeros((2, 32, 32, 3)))  # (2, 144)
    ```

    Args:
        feature_dim: int, M * d, the length of the output feature.
        filters: four ints, channels of the four stages. Default (64, 128, 256, 512), VGG-16's.
        image_shape: (height, width, channels). Default (32, 32, 3).
        bn_momentum: float, batch-norm moving-average momentum. Default 0.9.
        bn_epsilon: float, batch-norm epsilon. Default 1e-3.
        dtype: the dtype policy of every layer, e.g. `"mixed_bfloat16"`. Default: Keras' global policy.
    """

    def __init__(self, feature_dim, filters=(64, 128, 256, 512), image_shape=(32, 32, 3),
                 bn_momentum=0.9, bn_epsilon=1e-3, dtype=None, **kwargs):
        filters = tuple(filters)
        image_shape = tuple(image_shape)
        if len(filters) != 4:
            raise ValueError(f"Expected four stage widths. Received: filters={filters!r}")

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = inputs
        branch = None
        for stage, conv_name, bn_name in CONV_BLOCKS:
            x = keras.layers.Conv2D(filters[stage], 3, padding="same", name=conv_name, dtype=dtype)(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=bn_name,
                                                dtype=dtype)(x)
            x = keras.layers.ReLU(name=f"{conv_name}_relu", dtype=dtype)(x)
            if conv_name in ("conv0_1", "conv1_1", "conv2_2"):
                x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name=f"pool{stage}", dtype=dtype)(x)
            if conv_name == "conv2_2":
                branch = keras.layers.GlobalAveragePooling2D(name="pool2_gap", dtype=dtype)(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool3_gap", dtype=dtype)(x)
        x = keras.layers.Concatenate(name="two_scale_concat", dtype=dtype)([x, branch])
        outputs = keras.layers.Dense(feature_dim, name=FEATURE_LAYER, dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        if dtype is not None:  # the functional constructor drops `dtype`; keep it for get_config
            self.dtype_policy = keras.dtype_policies.get(dtype)

        # === Config ===
        self.feature_dim = feature_dim
        self.filters = filters
        self.image_shape = image_shape
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "feature_dim": self.feature_dim,
            "filters": list(self.filters),
            "image_shape": list(self.image_shape),
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
