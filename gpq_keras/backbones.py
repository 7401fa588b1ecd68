"""The original GPQ feature extractor F: ten VGG-16 conv layers with a two-scale pooled head."""

import keras

# Keras layer name -> TF1 variable scope of the original release (`Fixed_VGG/...`). Conv and batch norm
# layers appear in network order; TF1 numbers the convs `conv2d`, `conv2d_1`, ... in that same order.
CONV_BLOCKS = (
    # (stage, conv name, batch-norm name, TF1 conv scope, TF1 batch-norm scope)
    (0, "conv0", "batch0", "conv2d", "batch0"),
    (0, "conv0_1", "batch0_1", "conv2d_1", "batch0-1"),
    (1, "conv1", "batch1", "conv2d_2", "batch1"),
    (1, "conv1_1", "batch1_1", "conv2d_3", "batch1-1"),
    (2, "conv2", "batch2", "conv2d_4", "batch2"),
    (2, "conv2_1", "batch2_1", "conv2d_5", "batch2-1"),
    (2, "conv2_2", "batch2_2", "conv2d_6", "batch2-2"),
    (3, "conv3", "batch3", "conv2d_7", "batch3"),
    (3, "conv3_1", "batch3_1", "conv2d_8", "batch3-1"),
    (3, "conv3_2", "batch3_2", "conv2d_9", "batch3-2"),
)
FEATURE_LAYER = ("feature_vector", "dense")  # (Keras name, TF1 scope)
TF1_SCOPE = "Fixed_VGG"


def tf1_layer_names():
    """{Keras layer name: TF1 scope} for every layer with weights, e.g. 'batch0_1' -> 'Fixed_VGG/batch0-1'."""
    names = {}
    for _, conv, bn, tf1_conv, tf1_bn in CONV_BLOCKS:
        names[conv] = f"{TF1_SCOPE}/{tf1_conv}"
        names[bn] = f"{TF1_SCOPE}/{tf1_bn}"
    names[FEATURE_LAYER[0]] = f"{TF1_SCOPE}/{FEATURE_LAYER[1]}"
    return names


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
    """

    def __init__(self, feature_dim, filters=(64, 128, 256, 512), image_shape=(32, 32, 3),
                 bn_momentum=0.9, bn_epsilon=1e-3, **kwargs):
        filters = tuple(filters)
        image_shape = tuple(image_shape)
        if len(filters) != 4:
            raise ValueError(f"Expected four stage widths. Received: filters={filters!r}")

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = inputs
        branch = None
        for stage, conv_name, bn_name, _, _ in CONV_BLOCKS:
            x = keras.layers.Conv2D(filters[stage], 3, padding="same", name=conv_name)(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=bn_name)(x)
            x = keras.layers.ReLU(name=f"{conv_name}_relu")(x)
            if conv_name in ("conv0_1", "conv1_1", "conv2_2"):
                x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name=f"pool{stage}")(x)
            if conv_name == "conv2_2":
                branch = keras.layers.GlobalAveragePooling2D(name="pool2_gap")(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool3_gap")(x)
        x = keras.layers.Concatenate(name="two_scale_concat")([x, branch])
        outputs = keras.layers.Dense(feature_dim, name=FEATURE_LAYER[0])(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

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
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
