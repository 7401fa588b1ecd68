"""GPQ hyper-parameters: one validated object, the original release's values as defaults.

Also the few constants and argument checks that layers, retrieval and the config share.
"""

import dataclasses
import math
import numbers

RETRIEVAL_MODES = ("original", "consistent")
# gpq_keras.distribute.make_strategy: tf.distribute's, and JAX's `keras.distribution.DataParallel`
STRATEGIES = ("auto", "one", "mirrored", "multi-worker", "data-parallel")
L2_EPSILON = 1e-12  # the floor tf.nn.l2_normalize puts under a squared norm (intra-normalisation)
# Keys of GPQConfig before the KerasHub-style names; `.keras` files saved with them still load.
LEGACY_KEYS = {
    "n_book": "num_subspaces",
    "n_word": "num_codewords",
    "len_code": "subspace_dim",
    "n_classes": "num_classes",
}


def check_positive_int(name, value):
    """`value` as an int if it is one (NumPy ints too) and >= 1; a ValueError naming `name`
    otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Expected a positive int for `{name}`. Received: {name}={value!r}")
    return int(value)


def check_non_negative(name, value):
    """`value` as a float if it is a number >= 0 (not NaN); a ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"Expected a non-negative number for `{name}`. Received: {name}={value!r}")
    return float(value)


def rename_legacy_keys(values):
    """A copy of a dict of GPQConfig fields with the old names (`LEGACY_KEYS`) renamed."""
    values = dict(values)
    for old, new in LEGACY_KEYS.items():
        if old in values:
            if new in values:
                raise ValueError(f"GPQConfig: both {old!r} and its new name {new!r} are given")
            values[new] = values.pop(old)
    return values


def check_num_codewords(value, name="num_codewords"):
    """K as an int: a power of two in [2, 256] (codes are uint8); a ValueError naming `name`
    otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 2 <= value <= 256
        or value & (value - 1)
    ):
        raise ValueError(
            f"Expected K, a power of two in [2, 256] (codes are uint8), for `{name}`. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_mode(mode):
    """`mode` if it is one of `RETRIEVAL_MODES`; a ValueError otherwise."""
    if mode not in RETRIEVAL_MODES:
        raise ValueError(f"Expected a retrieval mode in {RETRIEVAL_MODES}. Received: mode={mode!r}")
    return mode


@dataclasses.dataclass(frozen=True)
class GPQConfig:
    """Hyper-parameters of a GPQ network (defaults: the original `config.py`, 48 bits).

    Args:
        num_subspaces: int, M, the number of codebooks (sub-spaces). Default 12.
        num_codewords: int, K, codewords per codebook; a power of two. Default 16.
        subspace_dim: int, d, dimensions of one sub-vector. The feature is M * d. Default 12.
        alpha: float, soft-assignment scale. Default 20.
        beta: float, classifier scale. Default 4.
        lambda1: float, weight of the subspace entropy mini-max loss. Default 0.1.
        lambda2: float, weight of the classification loss. Default 0.1.
        reg_lambda: float, N-pair regulariser on feature norms. Default 0.002.
        num_classes: int, number of label classes. Default 10.
        image_shape: (height, width, channels) of the input images. Default (32, 32, 3).
        input_dim: int, D, for a model that takes embeddings (N, D) instead of images (then
            `image_shape` is not used). Default None: images.
        filters: widths of the four VGG conv stages, positive ints. Default (64, 128, 256, 512).
        learning_rate: float, initial Adam learning rate, finite and > 0. Default 2e-4.
        decay_steps: int, staircase decay period in steps. Default 100.
        decay_rate: float, learning-rate factor per period. Default 0.95.
        beta_1: float, Adam beta_1. Default 0.5.
        epsilon: float, Adam epsilon. Default 1e-8.
        sync_batch_norm: bool, the backbone's batch norm uses the statistics of the global batch of
            all replicas under a `tf.distribute` strategy (see README, "Training at scale"). Default
            False; `gpq train` turns it on when it trains on more than one replica.
        retrieval_mode: the codebook used at retrieval. `"consistent"` (default for models trained
            here; it retrieves better, see README): codes and queries use Z' = SA(intra_norm(C), Z),
            the codebook training quantises with, and intra-normalised queries. `"original"`: the
            original code's raw Z and raw queries (converted checkpoints use it).
    """

    num_subspaces: int = 12
    num_codewords: int = 16
    subspace_dim: int = 12
    alpha: float = 20.0
    beta: float = 4.0
    lambda1: float = 0.1
    lambda2: float = 0.1
    reg_lambda: float = 0.002
    num_classes: int = 10
    image_shape: tuple = (32, 32, 3)
    input_dim: int = None
    filters: tuple = (64, 128, 256, 512)
    learning_rate: float = 2e-4
    decay_steps: int = 100
    decay_rate: float = 0.95
    beta_1: float = 0.5
    epsilon: float = 1e-8
    sync_batch_norm: bool = False
    retrieval_mode: str = "consistent"

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(self.image_shape))

        def field_error(name, what):
            return ValueError(
                f"GPQConfig.{name} must be {what}. Received: {name}={getattr(self, name)!r}"
            )

        for name in (
            "num_subspaces",
            "num_codewords",
            "subspace_dim",
            "num_classes",
            "decay_steps",
        ):
            try:
                object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
            except ValueError:
                raise field_error(name, "a positive int") from None
        try:
            check_num_codewords(self.num_codewords)
        except ValueError:
            raise field_error(
                "num_codewords", "a power of two in [2, 256] (K; codes are uint8)"
            ) from None
        for name in ("alpha", "beta", "lambda1", "lambda2", "reg_lambda", "decay_rate", "epsilon"):
            try:
                value = check_non_negative(name, getattr(self, name))
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise field_error(name, "a finite non-negative number")
        try:
            learning_rate = check_non_negative("learning_rate", self.learning_rate)
        except ValueError:
            learning_rate = None
        if learning_rate is None or not 0 < learning_rate < math.inf:  # 0 trains nothing, inf NaNs
            raise field_error("learning_rate", "a finite number > 0")
        if not 0 <= self.beta_1 < 1:
            raise field_error("beta_1", "in [0, 1)")
        if self.input_dim is not None:
            try:
                object.__setattr__(
                    self, "input_dim", check_positive_int("input_dim", self.input_dim)
                )
            except ValueError:
                raise field_error(
                    "input_dim", "None or a positive int (the embeddings' width)"
                ) from None
        if len(self.image_shape) != 3 or not all(
            isinstance(v, int) and v > 0 for v in self.image_shape
        ):
            raise field_error("image_shape", "three positive ints (height, width, channels)")
        try:
            filters = tuple(check_positive_int("filters", v) for v in self.filters)
        except (TypeError, ValueError):  # not a sequence of positive ints
            filters = ()
        if len(filters) != 4:
            raise field_error("filters", "four positive ints (the widths of the VGG stages)")
        object.__setattr__(self, "filters", filters)
        if not isinstance(self.sync_batch_norm, bool):
            raise field_error("sync_batch_norm", "True or False")
        if self.retrieval_mode not in RETRIEVAL_MODES:
            raise field_error("retrieval_mode", f"one of {RETRIEVAL_MODES}")

    @property
    def feature_dim(self):
        """M * d, the length of a feature vector."""
        return self.num_subspaces * self.subspace_dim

    @property
    def takes_vectors(self):
        """Whether the model takes embeddings (N, input_dim) rather than images."""
        return self.input_dim is not None

    @property
    def input_shape(self):
        """The shape of one input: (input_dim,) for embeddings, else `image_shape`."""
        return (self.input_dim,) if self.takes_vectors else self.image_shape

    @property
    def bits(self):
        """M * log2(K), the length of a code in bits."""
        return self.num_subspaces * int(math.log2(self.num_codewords))

    @classmethod
    def from_bits(cls, bits, num_codewords=16, **kwargs):
        """A config with M = `bits / log2(num_codewords)` codebooks (12, 24, 32 or 48 bits with
        K=16)."""
        per_book = int(math.log2(check_num_codewords(num_codewords)))
        if (
            isinstance(bits, bool)
            or not isinstance(bits, int)
            or bits < per_book
            or bits % per_book
        ):
            raise ValueError(
                f"bits must be a positive multiple of log2(num_codewords)={per_book}. "
                f"Received: bits={bits!r}"
            )
        return cls(num_subspaces=bits // per_book, num_codewords=num_codewords, **kwargs)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["image_shape"] = list(self.image_shape)
        out["filters"] = list(self.filters)
        if out["input_dim"] is None:  # an image model's dict stays as earlier versions wrote it
            del out["input_dim"]
        return out

    @classmethod
    def from_dict(cls, values):
        """Build from a dict (e.g. `get_config` or JSON); unknown keys raise a ValueError naming
        them.

        The names of earlier versions (`n_book`, `n_word`, `len_code`, `n_classes`) are read as
        `num_subspaces`, `num_codewords`, `subspace_dim`, `num_classes`.
        """
        values = rename_legacy_keys(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown GPQConfig field(s): {', '.join(unknown)}")
        return cls(**values)


PRESETS = {f"gpq_cifar10_{bits}bit": GPQConfig.from_bits(bits) for bits in (12, 24, 32, 48)}


def get_preset(name):
    """The `GPQConfig` of a preset by name, e.g. `"gpq_cifar10_48bit"`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
