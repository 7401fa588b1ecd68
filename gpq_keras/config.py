"""GPQ hyper-parameters: one validated object, the original release's values as defaults."""

import dataclasses
import math

RETRIEVAL_MODES = ("original", "consistent")


@dataclasses.dataclass(frozen=True)
class GPQConfig:
    """Hyper-parameters of a GPQ network (defaults: the original `config.py`, 48 bits).

    Args:
        n_book: int, M, the number of codebooks (sub-spaces). Default 12.
        n_word: int, K, codewords per codebook; a power of two. Default 16.
        len_code: int, d, dimensions of one sub-vector. The feature is M * d. Default 12.
        alpha: float, soft-assignment scale. Default 20.
        beta: float, classifier scale. Default 4.
        lambda1: float, weight of the subspace entropy mini-max loss. Default 0.1.
        lambda2: float, weight of the classification loss. Default 0.1.
        reg_lambda: float, N-pair regulariser on feature norms. Default 0.002.
        n_classes: int, number of label classes. Default 10.
        image_shape: (height, width, channels) of the input images. Default (32, 32, 3).
        filters: widths of the four VGG conv stages. Default (64, 128, 256, 512).
        learning_rate: float, initial Adam learning rate. Default 2e-4.
        decay_steps: int, staircase decay period in steps. Default 100.
        decay_rate: float, learning-rate factor per period. Default 0.95.
        beta_1: float, Adam beta_1. Default 0.5.
        epsilon: float, Adam epsilon. Default 1e-8.
        retrieval_mode: the codebook used at retrieval. `"consistent"` (default for models trained
            here; it retrieves better, see README): codes and queries use Z' = SA(intra_norm(C), Z), the
            codebook training quantises with, and intra-normalised queries. `"original"`: the original
            code's raw Z and raw queries (converted checkpoints use it).
    """

    n_book: int = 12
    n_word: int = 16
    len_code: int = 12
    alpha: float = 20.0
    beta: float = 4.0
    lambda1: float = 0.1
    lambda2: float = 0.1
    reg_lambda: float = 0.002
    n_classes: int = 10
    image_shape: tuple = (32, 32, 3)
    filters: tuple = (64, 128, 256, 512)
    learning_rate: float = 2e-4
    decay_steps: int = 100
    decay_rate: float = 0.95
    beta_1: float = 0.5
    epsilon: float = 1e-8
    retrieval_mode: str = "consistent"

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        object.__setattr__(self, "filters", tuple(self.filters))
        for name in ("n_book", "n_word", "len_code", "n_classes", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPQConfig.{name} must be a positive int. Received: {name}={value!r}")
        if self.n_word < 2 or self.n_word & (self.n_word - 1):
            raise ValueError(
                f"GPQConfig.n_word (K) must be a power of two >= 2. Received: n_word={self.n_word!r}")
        if self.n_word > 256:
            raise ValueError(
                f"GPQConfig.n_word (K) must be <= 256 so codes fit uint8. Received: n_word={self.n_word!r}")
        for name in ("alpha", "beta", "lambda1", "lambda2", "reg_lambda", "learning_rate",
                     "decay_rate", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(
                    f"GPQConfig.{name} must be a non-negative number. Received: {name}={value!r}")
        if not 0 <= self.beta_1 < 1:
            raise ValueError(f"GPQConfig.beta_1 must be in [0, 1). Received: beta_1={self.beta_1!r}")
        if len(self.image_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in self.image_shape):
            raise ValueError(
                "GPQConfig.image_shape must be three positive ints (height, width, channels). "
                f"Received: image_shape={self.image_shape!r}")
        if len(self.filters) != 4 or not all(isinstance(v, int) and v > 0 for v in self.filters):
            raise ValueError(
                f"GPQConfig.filters must be four positive ints. Received: filters={self.filters!r}")
        if self.retrieval_mode not in RETRIEVAL_MODES:
            raise ValueError(
                f"GPQConfig.retrieval_mode must be one of {RETRIEVAL_MODES}. "
                f"Received: retrieval_mode={self.retrieval_mode!r}")

    @property
    def feature_dim(self):
        """M * d, the length of a feature vector."""
        return self.n_book * self.len_code

    @property
    def bits(self):
        """M * log2(K), the length of a code in bits."""
        return self.n_book * int(math.log2(self.n_word))

    @classmethod
    def from_bits(cls, bits, n_word=16, **kwargs):
        """A config with `bits / log2(n_word)` codebooks (12, 24, 32 or 48 bits with K=16)."""
        per_book = int(math.log2(n_word)) if n_word >= 2 else 0
        if per_book < 1 or (n_word & (n_word - 1)):
            raise ValueError(f"GPQConfig.n_word (K) must be a power of two >= 2. Received: n_word={n_word!r}")
        if not isinstance(bits, int) or bits < per_book or bits % per_book:
            raise ValueError(
                f"bits must be a positive multiple of log2(n_word)={per_book}. Received: bits={bits!r}")
        return cls(n_book=bits // per_book, n_word=n_word, **kwargs)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["image_shape"] = list(self.image_shape)
        out["filters"] = list(self.filters)
        return out

    @classmethod
    def from_dict(cls, values):
        """Build from a dict (e.g. `get_config` or JSON); unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown GPQConfig field(s): {', '.join(unknown)}")
        return cls(**values)


PRESETS = {
    f"gpq_cifar10_{bits}bit": GPQConfig.from_bits(bits) for bits in (12, 24, 32, 48)
}


def get_preset(name):
    """The `GPQConfig` of a preset by name, e.g. `"gpq_cifar10_48bit"`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
