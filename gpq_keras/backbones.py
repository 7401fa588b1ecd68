"""The original GPQ feature extractor F: ten VGG-16 conv layers with a two-scale pooled head."""

import contextlib
import json
import os
import re
import warnings

import keras
import numpy as np
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

    def __init__(self, *args, synchronized=False, **kwargs):
        # Keras refuses synchronized=True off TensorFlow. A model trained with sync batch norm under
        # tf.distribute still loads on JAX and torch, whose step sees the whole batch anyway
        # (`keras.distribution.DataParallel`): the flag is kept in the config, and used on TF only.
        on_tensorflow = keras.config.backend() == "tensorflow"
        super().__init__(*args, synchronized=bool(synchronized) and on_tensorflow, **kwargs)
        self._synchronized_config = bool(synchronized)

    def get_config(self):
        return {**super().get_config(), "synchronized": self._synchronized_config}

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


# --- any backbone: keras.applications, KerasHub presets, embeddings -------------------------------

HUB_PREFIX = "kerashub:"
BACKBONE_NAMES = (
    "vgg",
    "mlp",
    "identity",
    "resnet50",
    "efficientnetv2_b0",
    "convnext_tiny",
    "mobilenet_v3_small",
)
HUB_MISSING = "--backbone kerashub:... needs the keras-hub package: pip install gpq-keras[hub]"


class BackboneError(ValueError):
    """A backbone name, image size or weights file that cannot give a backbone (one line)."""


class _Application:
    """One `keras.applications` model: its constructor, pixel preprocessing and minimum size."""

    def __init__(self, constructor, preprocessing, min_size=32):
        self.constructor = constructor  # the name in keras.applications
        self.preprocessing = preprocessing  # "caffe" (here, image_converter) or "inside" the model
        self.min_size = min_size  # the constructor refuses smaller images (ConvNeXt needs it)


# name -> the application; each takes float pixels 0..255 (RGB) once its preprocessing is applied.
APPLICATIONS = {
    "resnet50": _Application("ResNet50", "caffe"),
    "efficientnetv2_b0": _Application("EfficientNetV2B0", "inside"),
    "convnext_tiny": _Application("ConvNeXtTiny", "inside"),
    "mobilenet_v3_small": _Application("MobileNetV3Small", "inside"),
}


def _known_names():
    return ", ".join(BACKBONE_NAMES) + f", {HUB_PREFIX}PRESET_OR_PATH"


def _unknown(name):
    return BackboneError(f"unknown backbone {name!r}; known: {_known_names()}")


@contextlib.contextmanager
def _global_dtype_policy(dtype):
    """Keras' global dtype policy set to `dtype` (None: unchanged) inside the block, for the
    application constructors, which take no `dtype`."""
    if dtype is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras.dtype_policies.get(dtype))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _set_dtype(model, dtype):
    if dtype is not None:  # the functional constructor drops `dtype`; keep it for get_config
        model.dtype_policy = keras.dtype_policies.get(dtype)


class _Cache:
    """A holder Keras neither tracks nor saves (a derived model kept off the saved state)."""

    model = None


@keras.saving.register_keras_serializable(package="gpq_keras")
class ApplicationBackbone(keras.Model):
    """A `keras.applications` model as F: pixels -> its preprocessing -> the model ("base") ->
    global average pooling -> Dense(feature_dim, name="feature_vector").

    Takes float (or uint8) RGB pixels 0..255 (B, H, W, 3), `pixel_contract = "pixels"`: ResNet50's
    caffe preprocessing runs here (`image_converter.caffe_preprocess`), the others' inside the
    application (`include_preprocessing=True`). Returns raw features (B, feature_dim).

    ```python
    backbone = ApplicationBackbone("resnet50", 144, image_shape=(32, 32, 3))
    features = backbone(np.zeros((2, 32, 32, 3)))  # (2, 144)
    pooled = backbone.feature_extractor(np.zeros((2, 32, 32, 3)))  # (2, 2048)
    ```

    Args:
        application: one of `APPLICATIONS`: "resnet50", "efficientnetv2_b0", "convnext_tiny",
            "mobilenet_v3_small".
        feature_dim: int, M * d, the length of the output feature.
        image_shape: (height, width, 3), at least `min_image_size` (32) on each side. Default
            (224, 224, 3).
        weights: None (random), "imagenet" (Keras downloads its ImageNet weights) or the path of the
            base's weights: a keras.applications notop `.h5` or a `.weights.h5` saved from `base`.
            Used here only: `get_config` stores None (a saved model carries its weights).
        dtype: the dtype policy of every layer. Default: Keras' global policy.
    """

    pixel_contract = "pixels"

    def __init__(
        self,
        application,
        feature_dim,
        image_shape=(224, 224, 3),
        weights=None,
        dtype=None,
        name="backbone",
        **kwargs,
    ):
        if application not in APPLICATIONS:
            raise _unknown(application)
        spec = APPLICATIONS[application]
        image_shape = tuple(int(s) for s in image_shape)
        _check_image_size(application, image_shape, spec.min_size)
        base = _build_application(application, spec, image_shape, weights, dtype)
        base.name = "base"  # after construction: EfficientNetV2 and ConvNeXt read their own name

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = inputs
        if spec.preprocessing == "caffe":
            from gpq_keras.image_converter import caffe_preprocess

            x = caffe_preprocess(x)
        x = base(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool", dtype=dtype)(x)
        outputs = keras.layers.Dense(feature_dim, name=FEATURE_LAYER, dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        _set_dtype(self, dtype)

        # === Config ===
        self.application = application
        self.feature_dim = feature_dim
        self.image_shape = image_shape
        self._features = _Cache()

    @property
    def base(self):
        """The `keras.applications` model (images after preprocessing -> feature map)."""
        return self.get_layer("base")

    @property
    def min_image_size(self):
        """The smallest height and width the application takes (32)."""
        return APPLICATIONS[self.application].min_size

    @property
    def feature_extractor(self):
        """A `keras.Model` pixels (B, H, W, 3) -> pooled features (B, C) (no Dense), sharing this
        backbone's layers: what `gpq embed` runs."""
        return _feature_extractor(self, "pool")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "application": self.application,
            "feature_dim": self.feature_dim,
            "image_shape": list(self.image_shape),
            "weights": None,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _feature_extractor(backbone, pooled_layer):
    if backbone._features.model is None:
        backbone._features.model = keras.Model(
            backbone.input, backbone.get_layer(pooled_layer).output, name="feature_extractor"
        )
    return backbone._features.model


def _check_image_size(label, image_shape, min_size):
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise BackboneError(f"{label} takes RGB images (H, W, 3); got image_shape={image_shape}")
    height, width = image_shape[:2]
    if height < min_size or width < min_size:
        raise BackboneError(
            f"{label} needs images of at least {min_size}x{min_size}; got {height}x{width} "
            f"(--image-size {min_size} or more)"
        )


def _build_application(application, spec, image_shape, weights, dtype):
    """The keras.applications model (include_top=False, no pooling) with `weights` loaded."""
    path = None
    if weights is not None and weights != "imagenet":
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No backbone weights file at {path}")
    constructor = getattr(keras.applications, spec.constructor)
    kwargs = {"include_top": False, "pooling": None, "input_shape": image_shape}
    if spec.preprocessing == "inside":
        kwargs["include_preprocessing"] = True
    with _global_dtype_policy(dtype), warnings.catch_warnings():
        # MobileNetV3 warns that ImageNet weights are for 224x224; they work at any size.
        warnings.filterwarnings("ignore", "`input_shape` is undefined or non-square")
        if weights == "imagenet":
            try:
                base = constructor(weights="imagenet", **kwargs)
            except Exception as exc:  # Keras' get_file raises a bare Exception for URL errors
                if not _is_download_error(exc):
                    raise
                raise BackboneError(
                    f"{application} --backbone-weights imagenet needs the network to download "
                    "Keras' ImageNet weights; pass a local weights file (--backbone-weights PATH)"
                ) from None
        else:
            base = constructor(weights=None, **kwargs)
    if path is not None:
        load_weights_file(base, path, application)
    return base


def _is_download_error(exc):
    import urllib.error

    return isinstance(exc, (OSError, urllib.error.URLError)) or str(exc).startswith(
        "URL fetch failure"
    )


# --- weights files (h5py, no pickle) --------------------------------------------------------------


def _snake_case(name):
    """Keras' `naming.to_snake_case`: the key a `.weights.h5` gives a layer of this class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _saved_keys(layers):
    """[(key, layer)] as Keras 3 names a model's layers in a `.weights.h5`: the class name in snake
    case, `_1`, `_2`, ... for repeats (not the layer's name)."""
    used, keys = {}, []
    for layer in layers:
        key = _snake_case(type(layer).__name__)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys.append((key, layer))
    return keys


def _h5_strings(group, name):
    """An attribute list of strings of a legacy h5 group (Keras splits long ones: name0, name1)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_plan(root, model):
    """[(layer name, variables, datasets or None)] of a keras.applications `.h5` (by layer name)."""
    saved = set(_h5_strings(root, "layer_names"))
    plan = []
    for layer in model.layers:
        variables = layer.trainable_weights + layer.non_trainable_weights  # the legacy order
        if not variables:
            continue
        if layer.name not in saved:
            plan.append((layer.name, variables, None))
            continue
        group = root[layer.name]
        plan.append((layer.name, variables, [group[w] for w in _h5_strings(group, "weight_names")]))
    return plan


def _keras3_plan(group, layers):
    """The same plan from a Keras 3 `.weights.h5` group "layers" (keys: `_saved_keys`), nested
    models (ConvNeXt's Sequential stems) recursively."""
    plan = []
    for key, layer in _saved_keys(layers):
        if not layer.weights:
            continue
        if isinstance(layer, keras.Model):
            inner = group.get(f"{key}/layers") if group is not None else None
            plan.extend(_keras3_plan(inner, layer.layers))
            continue
        saved = group.get(f"{key}/vars") if group is not None else None
        if saved is None:
            plan.append((layer.name, layer.weights, None))
        else:
            plan.append((layer.name, layer.weights, [saved[str(i)] for i in range(len(saved))]))
    return plan


def _shape_text(shapes, i):
    return str(shapes[i]) if i < len(shapes) else "no array"


def load_weights_file(model, path, label):
    """Load the weights file `path` into `model` (a keras.applications model), checking every layer
    first: a keras.applications `.h5` (attributes `layer_names`/`weight_names`, matched by layer
    name) or a Keras 3 `.weights.h5` saved from such a model (matched as Keras matches it).

    Raises FileNotFoundError for a missing file and `BackboneError` naming the first layer (in the
    model's order) that the file lacks or holds with other shapes; then nothing is loaded.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No backbone weights file at {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise BackboneError(
            f"{path} is not an HDF5 weights file (a keras.applications .h5 or a .weights.h5)"
        ) from None
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if _h5_strings(root, "layer_names"):
            plan = _legacy_plan(root, model)
        elif isinstance(handle.get("layers"), h5py.Group):
            plan = _keras3_plan(handle["layers"], model.layers)
        else:
            raise BackboneError(
                f"{path} holds no Keras weights (neither a keras.applications .h5 with "
                "layer_names nor a .weights.h5)"
            )
        for name, variables, datasets in plan:
            if datasets is None:
                raise BackboneError(
                    f"{path} does not fit {label}: layer {name!r} is missing from the file"
                )
            wanted = [tuple(v.shape) for v in variables]
            found = [tuple(d.shape) for d in datasets]
            if wanted != found:
                i = next(
                    i
                    for i in range(max(len(wanted), len(found)))
                    if i >= len(found) or i >= len(wanted) or wanted[i] != found[i]
                )
                raise BackboneError(
                    f"{path} does not fit {label}: layer {name!r} differs "
                    f"(file: {_shape_text(found, i)}, backbone: {_shape_text(wanted, i)})"
                )
        for _, variables, datasets in plan:
            for variable, dataset in zip(variables, datasets):
                variable.assign(np.asarray(dataset))


# --- KerasHub -------------------------------------------------------------------------------------


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise BackboneError(HUB_MISSING) from None
    return keras_hub


@keras.saving.register_keras_serializable(package="gpq_keras")
class HubBackbone(keras.Model):
    """A KerasHub `Backbone` as F: pixels -> Rescaling(scale, offset) -> the hub backbone ->
    pooling -> Dense(feature_dim, name="feature_vector").

    Takes float (or uint8) RGB pixels 0..255 (B, H, W, 3), `pixel_contract = "pixels"`. The pooling
    follows the hub backbone's output: a feature map (B, h, w, C) global-average-pooled, tokens
    (B, T, C) averaged over T, a vector (B, C) as it is. `hub_backbone_from_preset` builds one from
    a preset (its ImageConverter's scale and offset when it has one; resizing is the pipeline's).

    ```python
    backbone = hub_backbone_from_preset("./my_resnet_preset", 144, (32, 32, 3))
    features = backbone(np.zeros((2, 32, 32, 3)))  # (2, 144)
    ```

    Args:
        hub_backbone: a `keras_hub.models.Backbone` (or its `serialize_keras_object` dict).
        feature_dim: int, M * d, the length of the output feature.
        image_shape: (height, width, channels).
        scale, offset: pixels x scale + offset before the hub backbone; floats, or per-channel
            lists. Default 1/255 and 0 (pixels in [0, 1]).
        dtype: the dtype policy of the rescaling, pooling and dense layers (the hub backbone keeps
            its own). Default: Keras' global policy.
    """

    pixel_contract = "pixels"

    def __init__(
        self,
        hub_backbone,
        feature_dim,
        image_shape,
        scale=1.0 / 255.0,
        offset=0.0,
        dtype=None,
        name="backbone",
        **kwargs,
    ):
        if isinstance(hub_backbone, dict):
            _import_keras_hub()  # registers the hub classes the config names
            hub_backbone = keras.saving.deserialize_keras_object(hub_backbone)
        image_shape = tuple(int(s) for s in image_shape)
        scale, offset = _scalar_or_list(scale), _scalar_or_list(offset)

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = keras.layers.Rescaling(scale, offset, name="rescaling", dtype=dtype)(inputs)
        x = hub_backbone(x)
        if not isinstance(x, keras.KerasTensor):
            raise BackboneError(
                f"the KerasHub backbone {hub_backbone.name!r} gives {type(x).__name__} outputs; "
                "GPQ needs one feature map, token sequence or vector"
            )
        rank = len(x.shape)
        if rank == 4:
            x = keras.layers.GlobalAveragePooling2D(name="pool", dtype=dtype)(x)
        elif rank == 3:
            x = keras.layers.GlobalAveragePooling1D(name="pool", dtype=dtype)(x)
        elif rank == 2:
            x = keras.layers.Identity(name="pool", dtype=dtype)(x)
        else:
            raise BackboneError(
                f"the KerasHub backbone {hub_backbone.name!r} gives {rank}-D outputs "
                f"{tuple(x.shape)}; GPQ pools 2-D, 3-D or 4-D ones"
            )
        outputs = keras.layers.Dense(feature_dim, name=FEATURE_LAYER, dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        _set_dtype(self, dtype)

        # === Config ===
        self.feature_dim = feature_dim
        self.image_shape = image_shape
        self.scale = scale
        self.offset = offset
        self._hub_name = hub_backbone.name
        self._features = _Cache()

    @property
    def hub_backbone(self):
        """The KerasHub `Backbone`."""
        return self.get_layer(self._hub_name)

    @property
    def feature_extractor(self):
        """A `keras.Model` pixels (B, H, W, 3) -> pooled features (B, C) (no Dense), sharing this
        backbone's layers: what `gpq embed` runs."""
        return _feature_extractor(self, "pool")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "hub_backbone": keras.saving.serialize_keras_object(self.hub_backbone),
            "feature_dim": self.feature_dim,
            "image_shape": list(self.image_shape),
            "scale": self.scale,
            "offset": self.offset,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _scalar_or_list(value):
    """A float, or a list of floats for a per-channel value (JSON-friendly for get_config)."""
    if value is None:
        return None
    if np.ndim(value) == 0:
        return float(value)
    return [float(v) for v in np.ravel(value)]


def _local_preset_config(preset):
    """The `config` of a local preset folder's config.json, or None."""
    path = os.path.join(os.fspath(preset), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("config")


def hub_backbone_from_preset(preset_or_path, feature_dim, image_shape, dtype=None, name="backbone"):
    """A `HubBackbone` of a KerasHub preset (a built-in name, a `kaggle://` or `hf://` handle, or a
    local folder written by `save_to_preset`) with its weights, and the scale and offset of the
    preset's ImageConverter when it has one (else 1/255 and 0).

    Raises FileNotFoundError for a local folder that does not exist and `BackboneError` (one
    line) when keras-hub is missing or the preset cannot be loaded.
    """
    keras_hub = _import_keras_hub()
    preset = os.fspath(preset_or_path)
    if "://" not in preset and (os.sep in preset or preset.startswith((".", "~"))):  # a folder
        preset = os.path.expanduser(preset)
        if not os.path.isdir(preset):
            raise FileNotFoundError(f"No KerasHub preset folder at {preset}")
    image_shape = tuple(int(s) for s in image_shape)
    kwargs = {"dtype": keras.dtype_policies.get(dtype) if dtype is not None else None}
    local = _local_preset_config(preset) if os.path.isdir(preset) else None
    if local is not None and "image_shape" in local:
        kwargs["image_shape"] = image_shape  # the hub backbone built for the model's images
    try:
        hub = keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except Exception as exc:  # KerasHub raises many types for a missing or foreign preset
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BackboneError(
            f"{HUB_PREFIX}{preset}: cannot load the KerasHub preset: {type(exc).__name__}: {detail}"
        ) from None
    scale, offset = 1.0 / 255.0, 0.0
    converter = _preset_image_converter(keras_hub, preset)
    if converter is not None:
        scale = 1.0 if converter.scale is None else converter.scale
        offset = 0.0 if converter.offset is None else converter.offset
    return HubBackbone(hub, feature_dim, image_shape, scale, offset, dtype=dtype, name=name)


def _preset_image_converter(keras_hub, preset):
    """The preset's ImageConverter, or None when it has none."""
    if os.path.isdir(preset) and not os.path.isfile(os.path.join(preset, "image_converter.json")):
        return None
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):
        return None


# --- embeddings -----------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="gpq_keras")
class EmbeddingBackbone(keras.Model):
    """F for precomputed embeddings (B, input_dim): per hidden width Dense(w, no bias) -> batch norm
    -> ReLU, then Dense(feature_dim, name="feature_vector"); or, `hidden_units=None`, the identity
    (input_dim == feature_dim, no weights). `pixel_contract = "vectors"`.

    ```python
    backbone = EmbeddingBackbone(input_dim=512, feature_dim=144)
    features = backbone(np.zeros((2, 512)))  # (2, 144)
    ```

    Args:
        input_dim: int, D, the width of the embeddings.
        feature_dim: int, M * d, the length of the output feature.
        hidden_units: ints, the hidden widths (default (512,)); `()` a single dense layer; None the
            identity.
        dtype: the dtype policy of every layer. Default: Keras' global policy.
    """

    pixel_contract = "vectors"

    def __init__(
        self, input_dim, feature_dim, hidden_units=(512,), dtype=None, name="backbone", **kwargs
    ):
        input_dim, feature_dim = int(input_dim), int(feature_dim)
        if hidden_units is not None:
            hidden_units = tuple(int(w) for w in hidden_units)
        elif input_dim != feature_dim:
            raise BackboneError(
                f"the identity backbone needs input_dim == feature_dim (M * d); got embeddings of "
                f"width {input_dim} for features of {feature_dim}"
            )

        # === Functional Model ===
        inputs = keras.Input(shape=(input_dim,), name="embeddings")
        x = inputs
        if hidden_units is None:
            outputs = keras.layers.Identity(name="identity", dtype=dtype)(x)
        else:
            for i, width in enumerate(hidden_units):
                x = keras.layers.Dense(width, use_bias=False, name=f"hidden{i}", dtype=dtype)(x)
                x = keras.layers.BatchNormalization(name=f"hidden{i}_bn", dtype=dtype)(x)
                x = keras.layers.ReLU(name=f"hidden{i}_relu", dtype=dtype)(x)
            outputs = keras.layers.Dense(feature_dim, name=FEATURE_LAYER, dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        _set_dtype(self, dtype)

        # === Config ===
        self.input_dim = input_dim
        self.feature_dim = feature_dim
        self.hidden_units = hidden_units

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_dim": self.input_dim,
            "feature_dim": self.feature_dim,
            "hidden_units": None if self.hidden_units is None else list(self.hidden_units),
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# --- by name --------------------------------------------------------------------------------------


def _check_name(name):
    """`name` if it is a backbone name or kerashub:PRESET_OR_PATH; `BackboneError` otherwise."""
    if not isinstance(name, str) or not (
        name in BACKBONE_NAMES or (name.startswith(HUB_PREFIX) and len(name) > len(HUB_PREFIX))
    ):
        raise _unknown(name)
    return name


def build_backbone(name, config, weights=None, mlp_width=512, dtype=None):
    """The backbone `name` for a `GPQConfig`, named "backbone", with feature_dim M * d.

    "vgg": `VGGBackbone` (config.filters, image_shape, sync_batch_norm; its ImageNet weights come
    from the original's .mat, `--imagenet-mat`). "mlp" / "identity": `EmbeddingBackbone` of
    config.input_dim (one hidden layer of `mlp_width` / none). An application name:
    `ApplicationBackbone` (`weights`: None, "imagenet" or a PATH). "kerashub:PRESET_OR_PATH":
    `hub_backbone_from_preset`. Raises `BackboneError` (one line) for an unknown name, weights a
    backbone cannot take, or inputs of the wrong kind.
    """
    _check_name(name)
    input_dim = getattr(config, "input_dim", None)
    label = name if name in BACKBONE_NAMES else "--backbone kerashub:"
    if name in ("mlp", "identity"):
        if input_dim is None:
            raise BackboneError(f"{name} takes embeddings: give GPQConfig.input_dim")
    elif input_dim is not None:
        raise BackboneError(
            f"{label} takes images, not embeddings: GPQConfig.input_dim must be None "
            f"(got {input_dim})"
        )
    if weights is not None and name not in APPLICATIONS:
        where = (
            "convert the original's .mat with --imagenet-mat"
            if name == "vgg"
            else (
                "a preset holds its weights"
                if name.startswith(HUB_PREFIX)
                else "it trains from scratch"
            )
        )
        raise BackboneError(f"{label} takes no --backbone-weights ({where})")
    if name == "vgg":
        return VGGBackbone(
            config.feature_dim,
            filters=config.filters,
            image_shape=config.image_shape,
            sync_batch_norm=config.sync_batch_norm,
            dtype=dtype,
            name="backbone",
        )
    if name in ("mlp", "identity"):
        hidden = (mlp_width,) if name == "mlp" else None
        return EmbeddingBackbone(input_dim, config.feature_dim, hidden, dtype=dtype)
    if name in APPLICATIONS:
        return ApplicationBackbone(name, config.feature_dim, config.image_shape, weights, dtype)
    return hub_backbone_from_preset(
        name[len(HUB_PREFIX) :], config.feature_dim, config.image_shape, dtype=dtype
    )


def build_feature_extractor(name, image_shape, weights=None):
    """A `keras.Model` float RGB pixels 0..255 (B, H, W, 3) -> pooled features (B, C) of an
    application (`weights` None, "imagenet" or a PATH) or a "kerashub:PRESET_OR_PATH" backbone, with
    the preprocessing of `ApplicationBackbone` / `HubBackbone`: what `gpq embed` runs."""
    _check_name(name)
    if name in APPLICATIONS:
        return ApplicationBackbone(name, 1, image_shape, weights).feature_extractor
    if name.startswith(HUB_PREFIX):
        if weights is not None:
            raise BackboneError(
                "--backbone kerashub: takes no --backbone-weights (a preset holds its weights)"
            )
        return hub_backbone_from_preset(name[len(HUB_PREFIX) :], 1, image_shape).feature_extractor
    raise BackboneError(
        f"{name} has no pretrained feature extractor; embed with one of "
        f"{', '.join(APPLICATIONS)} or {HUB_PREFIX}PRESET_OR_PATH"
    )
