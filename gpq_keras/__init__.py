"""gpq-keras: Generalized Product Quantization (Jang & Cho, CVPR 2020) in Keras 3."""

from gpq_keras.backbones import VGGBackbone
from gpq_keras.config import PRESETS, GPQConfig, get_preset
from gpq_keras.layers import GradientReversal, IntraNormalization, SoftProductQuantizer, SubspaceClassifier
from gpq_keras.model import GPQ, default_optimizer

__version__ = "0.1.0"
