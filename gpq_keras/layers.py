"""GPQ's building blocks as serialisable Keras layers (Jang & Cho, CVPR 2020).

Shapes: B = batch, M = `num_subspaces` (codebooks), d = sub-vector length, K = codewords.
"""

import keras
from keras import ops

from gpq_keras.config import L2_EPSILON, check_non_negative, check_positive_int


def _split_subspaces(x, num_subspaces):
    """(B, M*d) -> (B, M, d)."""
    dim = x.shape[-1]
    if dim is not None and dim % num_subspaces:
        raise ValueError(
            f"The last axis ({dim}) must be divisible by num_subspaces={num_subspaces}. "
            f"Received input shape: {tuple(x.shape)}"
        )
    return ops.reshape(x, (-1, num_subspaces, dim // num_subspaces))


def intra_normalize(x, num_subspaces):
    """L2-normalise each of the M sub-vectors of x (B, M*d) separately -> (B, M*d), in x's dtype.

    Computed in float32 whatever x's dtype: in float16 the `L2_EPSILON` floor would round to 0 and
    squared norms leave the range, giving inf/NaN for tiny or huge sub-vectors.
    """
    dtype = x.dtype
    parts = _split_subspaces(ops.cast(x, "float32"), num_subspaces)
    sq = ops.sum(ops.square(parts), axis=-1, keepdims=True)
    parts = parts * ops.rsqrt(ops.maximum(sq, L2_EPSILON))
    return ops.cast(ops.reshape(parts, (-1, x.shape[-1])), dtype)


def soft_assignment(x, codebook, num_subspaces, alpha):
    """SA(Z, x): soft product quantisation of x (B, M*d) with codebook Z (K, M*d) -> (B, M*d).

    Per sub-space m: w = softmax_k(-alpha * (1 - x_m . z_mk)), x_m <- sum_k w_k z_mk; the result is
    intra-normalised.
    """
    xs = _split_subspaces(x, num_subspaces)  # (B, M, d)
    zs = _split_subspaces(codebook, num_subspaces)  # (K, M, d)
    similarity = ops.einsum("bmd,kmd->bmk", xs, zs)
    weights = ops.softmax(-alpha * (1.0 - similarity), axis=-1)
    soft = ops.einsum("bmk,kmd->bmd", weights, zs)
    return intra_normalize(ops.reshape(soft, (-1, x.shape[-1])), num_subspaces)


def subspace_logits(features, prototypes, num_subspaces, beta):
    """Classifier logits mean_m (beta f_m) . (beta p_m): f (B, M*d), p (classes, M*d)
    -> (B, classes)."""
    fs = _split_subspaces(features * beta, num_subspaces)
    ps = _split_subspaces(prototypes * beta, num_subspaces)
    return ops.einsum("bmd,cmd->bc", fs, ps) / num_subspaces


@keras.saving.register_keras_serializable(package="gpq_keras")
class IntraNormalization(keras.layers.Layer):
    """L2-normalises each of the M sub-vectors of a feature separately.

    ```python
    layer = IntraNormalization(num_subspaces=12)
    y = layer(np.random.rand(4, 144))  # each y[:, 12*m:12*(m+1)] has unit norm
    ```

    Args:
        num_subspaces: int, M, the number of sub-vectors.
    """

    def __init__(self, num_subspaces, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_subspaces", num_subspaces)
        self.num_subspaces = num_subspaces
        self.supports_masking = True

    def call(self, inputs):
        return intra_normalize(ops.cast(inputs, self.compute_dtype), self.num_subspaces)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_subspaces": self.num_subspaces}


@keras.saving.register_keras_serializable(package="gpq_keras")
class SoftProductQuantizer(keras.layers.Layer):
    """Soft product quantisation with a learned codebook Z of shape (K, M*d).

    `call(x)` returns SA(Z, x). With `prototypes` P (intra-normalised class prototypes), the
    codebook is first refined as in the paper, Z' = SA(P, Z), and the output is SA(Z', x).

    ```python
    quantizer = SoftProductQuantizer(num_subspaces=12, num_codewords=16, alpha=20.0)
    q = quantizer(intra_normalize(features, 12))  # (B, 144)
    ```

    Args:
        num_subspaces: int, M.
        num_codewords: int, K, codewords per codebook.
        alpha: float, soft-assignment scale. Default 20.
        codebook_initializer: initializer of Z. Default glorot_uniform.
    """

    def __init__(
        self,
        num_subspaces,
        num_codewords,
        alpha=20.0,
        codebook_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_subspaces", num_subspaces)
        check_positive_int("num_codewords", num_codewords)
        check_non_negative("alpha", alpha)
        self.num_subspaces = num_subspaces
        self.num_codewords = num_codewords
        self.alpha = float(alpha)
        self.codebook_initializer = keras.initializers.get(codebook_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % self.num_subspaces:
            raise ValueError(
                "SoftProductQuantizer needs a last axis divisible by "
                f"num_subspaces={self.num_subspaces}. "
                f"Received input shape: {input_shape}"
            )
        self.codewords = self.add_weight(
            name="codewords", shape=(self.num_codewords, dim), initializer=self.codebook_initializer
        )

    def codebook(self, prototypes=None):
        """Z, or Z' = SA(P, Z) when prototypes P (classes, M*d) are given -> (K, M*d)."""
        z = ops.cast(self.codewords, self.compute_dtype)
        if prototypes is None:
            return z
        return soft_assignment(
            z, ops.cast(prototypes, self.compute_dtype), self.num_subspaces, self.alpha
        )

    def call(self, inputs, prototypes=None):
        inputs = ops.cast(inputs, self.compute_dtype)
        return soft_assignment(inputs, self.codebook(prototypes), self.num_subspaces, self.alpha)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_subspaces": self.num_subspaces,
            "num_codewords": self.num_codewords,
            "alpha": self.alpha,
            "codebook_initializer": keras.initializers.serialize(self.codebook_initializer),
        }


@keras.saving.register_keras_serializable(package="gpq_keras")
class SubspaceClassifier(keras.layers.Layer):
    """Subspace prototype classifier with class prototypes C of shape (classes, M*d).

    logits = mean_m (beta * f_m) . (beta * p_m), with p = intra_norm(C). The input f must already be
    intra-normalised, as in the paper.

    ```python
    classifier = SubspaceClassifier(num_classes=10, num_subspaces=12, beta=4.0)
    logits = classifier(intra_normalize(features, 12))  # (B, 10)
    ```

    Args:
        num_classes: int, number of classes (rows of C).
        num_subspaces: int, M.
        beta: float, scale of features and prototypes. Default 4.
        prototype_initializer: initializer of C. Default glorot_uniform.
    """

    def __init__(
        self, num_classes, num_subspaces, beta=4.0, prototype_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        check_positive_int("num_subspaces", num_subspaces)
        check_non_negative("beta", beta)
        self.num_classes = num_classes
        self.num_subspaces = num_subspaces
        self.beta = float(beta)
        self.prototype_initializer = keras.initializers.get(prototype_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim % self.num_subspaces:
            raise ValueError(
                "SubspaceClassifier needs a last axis divisible by "
                f"num_subspaces={self.num_subspaces}. "
                f"Received input shape: {input_shape}"
            )
        self.prototypes = self.add_weight(
            name="prototypes", shape=(self.num_classes, dim), initializer=self.prototype_initializer
        )

    def normalized_prototypes(self):
        """P = intra_norm(C), shape (classes, M*d)."""
        return intra_normalize(ops.cast(self.prototypes, self.compute_dtype), self.num_subspaces)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        return subspace_logits(inputs, self.normalized_prototypes(), self.num_subspaces, self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_subspaces": self.num_subspaces,
            "beta": self.beta,
            "prototype_initializer": keras.initializers.serialize(self.prototype_initializer),
        }


@keras.saving.register_keras_serializable(package="gpq_keras")
class GradientReversal(keras.layers.Layer):
    """Identity forward; multiplies the gradient by `-scale` backward.

    Written as stop_gradient((1 + s) x) - s x, which is x in value and -s in derivative.

    ```python
    reversed_features = GradientReversal()(features)  # same values, reversed gradients
    ```

    Args:
        scale: float, s, the factor of the reversed gradient. Default 1.
    """

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        check_non_negative("scale", scale)
        self.scale = float(scale)
        self.supports_masking = True

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        return ops.stop_gradient(inputs * (1.0 + self.scale)) - inputs * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
