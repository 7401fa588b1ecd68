"""gpq-keras: Generalized Product Quantization (Jang & Cho, CVPR 2020) in Keras 3.

The public names below load on first use, so `import gpq_keras` (and the `gpq` command's start) does
not import Keras or TensorFlow until something needs them.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "VGGBackbone": "gpq_keras.backbones",
    "ApplicationBackbone": "gpq_keras.backbones",
    "EmbeddingBackbone": "gpq_keras.backbones",
    "HubBackbone": "gpq_keras.backbones",
    "build_backbone": "gpq_keras.backbones",
    "GPQConfig": "gpq_keras.config",
    "PRESETS": "gpq_keras.config",
    "get_preset": "gpq_keras.config",
    "GradientReversal": "gpq_keras.layers",
    "IntraNormalization": "gpq_keras.layers",
    "SoftProductQuantizer": "gpq_keras.layers",
    "SubspaceClassifier": "gpq_keras.layers",
    "GPQ": "gpq_keras.model",
    "default_optimizer": "gpq_keras.optimizers",
    "ScaledAdam": "gpq_keras.optimizers",
    "PQIndex": "gpq_keras.retrieval",
}
__all__ = sorted(_EXPORTS)


def lazy_exports(namespace, exports):
    """(__getattr__, __dir__) for a package whose names in `exports` ({name: module}) load on first
    use (PEP 562), so importing the package imports none of those modules."""

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
