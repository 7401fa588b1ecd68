"""gpq-keras: Generalized Product Quantization (Jang & Cho, CVPR 2020) in Keras 3.

The public names below load on first use, so `import gpq_keras` (and the `gpq` command's start) does not
import Keras or TensorFlow until something needs them.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "VGGBackbone": "gpq_keras.backbones",
    "GPQConfig": "gpq_keras.config",
    "PRESETS": "gpq_keras.config",
    "get_preset": "gpq_keras.config",
    "GradientReversal": "gpq_keras.layers",
    "IntraNormalization": "gpq_keras.layers",
    "SoftProductQuantizer": "gpq_keras.layers",
    "SubspaceClassifier": "gpq_keras.layers",
    "GPQ": "gpq_keras.model",
    "default_optimizer": "gpq_keras.model",
    "PQIndex": "gpq_keras.retrieval",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpq_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
