"""The original GPQ feature extractor F: ten VGG-16 conv layers with a two-scale pooled head."""

import keras
from keras import ops

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
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on TensorFlow's fused kernel, as the original's
    `fused_batch_norm`.

    It keeps Keras' class name on purpose: `.keras` files address weights by class name, so models
    saved with Keras' own layer load into this one (and the other way round).

    For 4-D channels-last inputs on the TensorFlow backend, one fused op normalises (and in training
    gives the batch statistics); on other backends (JAX) the same computation runs in `keras.ops`,
    in float32, and Keras' own path only for masks and renorm. Like the original, training
    normalises with the batch variance and updates the moving variance with the unbiased one
    (x n / (n - 1), n = B * H * W); on TensorFlow 16-bit inputs stay 16-bit (the kernel accumulates
    in float32).

    `synchronized=True` under a `tf.distribute` strategy of several replicas: the mean and variance
    are those of the global batch (two all-reduces, two passes as the fused kernel), so N replicas
    normalise and update the moving statistics exactly as one device on the whole batch (n = the
    global count). On one replica it is the fused op. Without it each replica normalises with its
    own slice's statistics and the moving statistics take the mean over replicas of each one's
    update.

    ```python
    x = BatchNormalization(momentum=0.9, epsilon=1e-3)(images)  # gpq_keras.backbones
    ```
    """

    def add_weight(self, *args, **kwargs):
        if not kwargs.get("trainable", True):  # the moving statistics, updated inside each replica
            kwargs.setdefault("aggregation", "only_first_replica" if self.synchronized else "mean")
        return super().add_weight(*args, **kwargs)

    def _fusable(self, inputs, mask):
        return (
            keras.config.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.center
            and self.scale
            and not self.renorm
        )

    def call(self, inputs, training=None, mask=None):
        if mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if not self._fusable(inputs, mask):
            return self._ops_batch_norm(inputs, training)
        import tensorflow as tf

        x = ops.cast(inputs, self.compute_dtype)
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        if training and self.trainable:
            replicas = tf.distribute.get_replica_context()
            if self.synchronized and replicas is not None and replicas.num_replicas_in_sync > 1:
                y, mean, variance = self._synchronized_batch_norm(x, gamma, beta, replicas)
            else:
                y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                    x, gamma, beta, epsilon=self.epsilon, is_training=True
                )
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean * momentum + ops.cast(mean, "float32") * (1.0 - momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * momentum + ops.cast(variance, "float32") * (1.0 - momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=ops.cast(self.moving_mean, "float32"),
                variance=ops.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon,
                is_training=False,
            )
        return ops.cast(y, self.compute_dtype)

    def _ops_batch_norm(self, inputs, training):
        """The fused op's computation in `keras.ops` (any backend), in float32."""
        x = ops.cast(inputs, "float32")
        gamma = None if not self.scale else ops.cast(self.gamma, "float32")
        beta = None if not self.center else ops.cast(self.beta, "float32")
        if training and self.trainable:
            axis = self.axis % len(x.shape)
            axes = [i for i in range(len(x.shape)) if i != axis]
            mean = ops.mean(x, axis=axes)
            shape = [1] * len(x.shape)
            shape[axis] = -1
            variance = ops.mean(
                ops.square(x - ops.reshape(mean, shape)), axis=axes
            )  # two passes, as the kernel
            count = 1
            for i in axes:
                count = count * ops.shape(x)[i]
            count = ops.cast(count, "float32")
            unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + unbiased * (1.0 - momentum)
            )
        else:
            mean, variance = (
                ops.cast(self.moving_mean, "float32"),
                ops.cast(self.moving_variance, "float32"),
            )
        y = ops.batch_normalization(
            x, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return ops.cast(y, self.compute_dtype)

    def _synchronized_batch_norm(self, x, gamma, beta, replicas):
        """Normalise x (B, H, W, C) of this replica with the global batch's statistics -> (y, mean,
        unbiased variance), as `fused_batch_norm` gives them on one device holding every replica's
        images."""
        import tensorflow as tf

        x32 = tf.cast(x, tf.float32)
        count = tf.cast(tf.reduce_prod(tf.shape(x32)[:-1]), tf.float32)
        total, n = replicas.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.reduce_sum(x32, [0, 1, 2]), count]
        )
        mean = total / n
        squares = replicas.all_reduce(
            tf.distribute.ReduceOp.SUM,
            tf.reduce_sum(tf.math.squared_difference(x32, mean), [0, 1, 2]),
        )
        variance = squares / n
        y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, self.epsilon)
        return tf.cast(y, x.dtype), mean, variance * n / tf.maximum(n - 1.0, 1.0)


@keras.saving.register_keras_serializable(package="gpq_keras")
class VGGBackbone(keras.Model):
    """F: conv(3x3, SAME) -> batch norm -> ReLU, x10, in four stages, then a two-scale head.

    Stages of (2, 2, 3, 3) convs with `filters` channels; 2x2 max pools after stages 0-2. The head
    concatenates [global-avg-pool(stage 3), global-avg-pool(pooled stage 2)] and maps it to
    `feature_dim` with a dense layer. Returns raw (un-normalised) features (B, feature_dim).

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
        sync_batch_norm: bool, batch norm over the global batch of all replicas of a `tf.distribute`
            strategy (`BatchNormalization(synchronized=True)`). Default False.
        conv_bias: bool, give the convs biases. Default False: batch norm subtracts the batch mean
            right after each conv, so a bias there is cancelled in training and is only an offset of
            the moving mean at inference (the converter folds the original's biases into the moving
            means). Models saved by gpq_keras 0.1.0 have them and still load.
        dtype: the dtype policy of every layer, e.g. `"mixed_bfloat16"`. Default: Keras' global
            policy.
    """

    def __init__(
        self,
        feature_dim,
        filters=(64, 128, 256, 512),
        image_shape=(32, 32, 3),
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        sync_batch_norm=False,
        conv_bias=False,
        dtype=None,
        **kwargs,
    ):
        filters = tuple(filters)
        image_shape = tuple(image_shape)
        if len(filters) != 4:
            raise ValueError(f"Expected four stage widths. Received: filters={filters!r}")

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = inputs
        branch = None
        for stage, conv_name, bn_name in CONV_BLOCKS:
            x = keras.layers.Conv2D(
                filters[stage], 3, padding="same", use_bias=conv_bias, name=conv_name, dtype=dtype
            )(x)
            x = BatchNormalization(
                momentum=bn_momentum,
                epsilon=bn_epsilon,
                synchronized=sync_batch_norm,
                name=bn_name,
                dtype=dtype,
            )(x)
            x = keras.layers.ReLU(name=f"{conv_name}_relu", dtype=dtype)(x)
            if conv_name in ("conv0_1", "conv1_1", "conv2_2"):
                x = keras.layers.MaxPooling2D(
                    2, strides=2, padding="valid", name=f"pool{stage}", dtype=dtype
                )(x)
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
        self.sync_batch_norm = bool(sync_batch_norm)
        self.conv_bias = conv_bias

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "feature_dim": self.feature_dim,
            "filters": list(self.filters),
            "image_shape": list(self.image_shape),
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "sync_batch_norm": self.sync_batch_norm,
            "conv_bias": self.conv_bias,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            **{"conv_bias": True, **config}
        )  # 0.1.0 configs have no conv_bias: their convs had biases
