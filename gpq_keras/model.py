"""The GPQ task model: backbone F, codebook Z, prototypes C, and the semi-supervised objective."""

import os
import zipfile

import keras
import numpy as np
from keras import ops

from gpq_keras.backbones import FEATURE_LAYER, build_backbone
from gpq_keras.config import GPQConfig
from gpq_keras.data import eval_input
from gpq_keras.data.image_files import ImageFiles, reraise_file_errors
from gpq_keras.distribute import num_workers, strategy_of
from gpq_keras.files import FileFormatError, atomic_path
from gpq_keras.image_converter import check_image_batch, pixel_normalization
from gpq_keras.layers import (
    GradientReversal,
    IntraNormalization,
    SoftProductQuantizer,
    SubspaceClassifier,
)
from gpq_keras.losses import classification_loss, n_pair_pq_loss, subspace_entropy_loss
from gpq_keras.optimizers import ScaledAdam, default_optimizer
from gpq_keras.trainers import Trainer

LOSS_NAMES = ("loss", "npq_loss", "cls_loss", "entropy_loss")  # what fit/evaluate report


def save_atomic(model, path):
    """`model.save(path)` through a temporary file in the same folder, renamed into place at the
    end, so an existing file at `path` is never left half-written."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"A Keras model file must end in .keras. Received: {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)


ENCODE_PIXELS = 500 * 32 * 32  # images x pixels of one encoding batch: 500 at 32x32


ENCODE_VECTORS = 2048  # embeddings of one encoding batch


def encode_batch_size(input_shape):
    """`GPQ.encode`'s default batch for inputs of `input_shape`: for images (H, W, C)
    ENCODE_PIXELS pixels, between 8 and 500 images (500 at 32x32, 31 at 128x128, 10 at 224x224);
    for embeddings (D,) `ENCODE_VECTORS`."""
    if len(input_shape) == 1:
        return ENCODE_VECTORS
    height, width = input_shape[:2]
    return int(min(500, max(8, ENCODE_PIXELS // (int(height) * int(width)))))


def load_gpq(path):
    """Load a `GPQ` from a `.keras` file in Keras' safe mode (no code in the file is run).

    Raises FileNotFoundError for a missing file and `FileFormatError` naming the file for one that
    is not a whole `.keras` archive of a GPQ model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}")

    def bad(why):
        return FileFormatError(f"{path}: not a loadable GPQ model: {why}")

    try:
        with zipfile.ZipFile(path) as archive:
            names, damaged = archive.namelist(), archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise bad(f"not a .keras (zip) archive, or truncated ({type(exc).__name__})") from None
    if damaged is not None:
        raise bad(f"{damaged} in the archive is damaged (CRC mismatch)")
    if "config.json" not in names:
        raise bad("no config.json in the archive")
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # Keras, h5py and json raise many types for a damaged or foreign model
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise bad(f"{type(exc).__name__}: {detail}") from None
    if not isinstance(model, GPQ):
        raise bad(f"it holds a {type(model).__name__}")
    return model


@keras.saving.register_keras_serializable(package="gpq_keras")
class GPQ(Trainer, keras.Model):
    """Generalized Product Quantization network.

    Images are raw pixels, uint8 or float in 0..255, everywhere (`fit`, `predict`, `encode`, the
    exported model): the first layer normalises them with the original's channel statistics, as
    Keras applications take pixels. `fit` takes `({"labeled": x_l, "unlabeled": x_u}, y)` batches, y
    int class ids (B,) or multi-hot (B, classes); `predict`/`encode` return raw features F(x) (B,
    M*d).

    ```python
    model = GPQ(config=GPQConfig())
    model.compile()  # Adam(2e-4 * 0.95**(step // 100), beta_1=0.5)
    model.fit(dataset, epochs=300)
    ```

    Built under a `tf.distribute` strategy's scope, `fit` on global batches trains as one device on
    the whole batch: the N-pair loss sees every replica's images (see README, "Training at scale";
    with `GPQConfig.sync_batch_norm` the batch norm too).

    It runs on Keras' TensorFlow, JAX and PyTorch backends (`KERAS_BACKEND`): one objective,
    `compute_losses`, whose gradient TensorFlow takes with a tape, JAX with `jax.value_and_grad` in
    Keras' stateless `train_step(state, data)` and torch with `torch.autograd.grad` (see
    `gpq_keras.trainers` and docs/backends.md).

    Args:
        config: `GPQConfig` (or its dict). Default: the original 48-bit CIFAR-10 setting.
        backbone: the feature extractor F, images -> (B, M*d). Default `VGGBackbone` from the
            config.
        dtype: the dtype policy of the backbone, e.g. `"mixed_bfloat16"` or `"mixed_float16"` (then
            `compile` adds Keras' loss scaling). The heads (intra-normalisation, soft assignment, Z,
            C) and the losses always compute in float32. Default: Keras' global policy.
        normalize_pixels: bool, the model takes pixels and normalises them (default). False is the
            contract of models saved by earlier versions, which load with it: they take normalised
            images (`gpq_keras.data.normalize`) and `encode` normalises uint8 arrays.
    """

    def __init__(
        self,
        config=None,
        backbone=None,
        dtype=None,
        normalize_pixels=True,
        freeze_backbone=False,
        backbone_learning_rate_multiplier=1.0,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if config is None:
            config = GPQConfig()
        elif isinstance(config, dict):
            config = GPQConfig.from_dict(config)
        self.gpq_config = config
        if backbone is None:
            backbone = "mlp" if config.takes_vectors else "vgg"
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, config, dtype=self.dtype_policy)
        if backbone.output_shape[-1] != config.feature_dim:
            raise ValueError(
                f"The backbone's output ({backbone.output_shape[-1]}) must equal "
                f"num_subspaces * subspace_dim = {config.feature_dim}"
            )
        inputs = tuple(backbone.input_shape[1:])
        if inputs != tuple(config.input_shape):
            raise ValueError(
                f"The backbone takes inputs {inputs}, but the config's are "
                f"{tuple(config.input_shape)} (GPQConfig.input_dim for embeddings, "
                f"image_shape for images)"
            )
        self.backbone = backbone
        self.pixel_contract = getattr(backbone, "pixel_contract", "gpq")
        self.normalize_pixels = bool(normalize_pixels)
        self.preprocessor = None
        if self.normalize_pixels and self.pixel_contract == "gpq":
            # (x - mean) / std per channel, in float32 whatever the policy
            self.preprocessor = pixel_normalization(config.image_shape)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for layer in self.backbone_layers():
                layer.trainable = False  # batch norm then runs in inference mode
        multiplier = float(backbone_learning_rate_multiplier)
        if not 0 <= multiplier < float("inf"):
            raise ValueError(
                "backbone_learning_rate_multiplier must be a finite number >= 0; got "
                f"{backbone_learning_rate_multiplier!r}"
            )
        self.backbone_learning_rate_multiplier = multiplier
        self._build_heads(config)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        self.built = True  # every weight exists now

    def backbone_layers(self):
        """The layers of F that `freeze_backbone` freezes and the learning-rate multiplier slows:
        every layer holding weights but the head (`FEATURE_LAYER`, the dense layer to M*d)."""
        return [
            layer for layer in self.backbone.layers if layer.name != FEATURE_LAYER and layer.weights
        ]

    @property
    def takes_vectors(self):
        """Whether the model takes embeddings (N, D) (`GPQConfig.input_dim`) rather than images."""
        return self.gpq_config.takes_vectors

    def _build_heads(self, config):
        """intra_norm, the quantiser (Z), the classifier (C) and gradient reversal, built for (B,
        M*d), in float32 whatever the model's policy (soft assignment, softmaxes and the 1e-12 floor
        need it)."""
        m, shape = config.num_subspaces, (None, config.feature_dim)
        self.intra_norm = IntraNormalization(m, name="intra_norm", dtype="float32")
        self.quantizer = SoftProductQuantizer(
            m, config.num_codewords, config.alpha, name="quantizer", dtype="float32"
        )
        self.classifier = SubspaceClassifier(
            config.num_classes, m, config.beta, name="classifier", dtype="float32"
        )
        self.reversal = GradientReversal(name="gradient_reversal", dtype="float32")
        for layer in (self.intra_norm, self.quantizer, self.classifier, self.reversal):
            layer.build(shape)

    def build(self, input_shape=None):
        """All weights are created in `__init__`; nothing is left to build."""
        self.built = True

    # --- inference -------------------------------------------------------------------------------
    def call(self, images, training=False):
        """F(x): raw features (B, M*d) of pixels (B, H, W, C) (normalised images without
        `normalize_pixels`)."""
        if self.preprocessor is not None:
            images = self.preprocessor(images)
        return self.backbone(images, training=training)

    def check_inputs(self, inputs):
        """Raise a ValueError unless `inputs` are what the model takes: images (N, H, W, C) of its
        `image_shape`, or embeddings (N, input_dim) for a model on embeddings."""
        shape = tuple(np.shape(inputs)[1:])
        if self.takes_vectors:
            if shape != (self.gpq_config.input_dim,):
                got = (
                    f"images {tuple(np.shape(inputs))}"
                    if len(shape) == 3
                    else (f"embeddings {tuple(np.shape(inputs))}")
                )
                raise ValueError(
                    f"the model takes embeddings (N, {self.gpq_config.input_dim}); got {got}"
                )
            return
        if len(shape) == 1:
            height, width, channels = self.gpq_config.image_shape
            raise ValueError(
                f"the model takes images (N, {height}, {width}, {channels}); got embeddings "
                f"{tuple(np.shape(inputs))}"
            )
        check_image_batch(inputs, self.gpq_config.image_shape)

    check_images = check_inputs  # the name of earlier versions

    def encode(self, images, batch_size=None, verbose=0):
        """Raw features F(x) as a float32 NumPy array (N, M*d) of pixels (N, H, W, C), uint8 or
        float in 0..255, batched by the backend's input pipeline (`gpq_keras.data.eval_input`). A
        `tf.data.Dataset` or `keras.utils.PyDataset` of batches is used as it is.

        `batch_size` defaults to `encode_batch_size(image_shape)`: 500 at 32x32, fewer for larger
        images (31 at 128x128), so the backbone's activations, not the image size, bound memory.

        `images` may be `gpq_keras.data.image_files.ImageFiles` at the model's image size (else
        the ValueError of `check_images`; `files.with_size(...)` reads them at another): each batch
        is read when drawn, prefetched, so memory is bounded by the batch. A file that cannot be
        read raises its own one-line error naming it (FileNotFoundError or `UnreadableFile`:
        `predict` runs inside `reraise_file_errors`).

        (A model with `normalize_pixels=False`, saved by an earlier version, keeps its contract:
        uint8 arrays are normalised here, float arrays taken as normalised.)
        """
        if batch_size is None:
            batch_size = encode_batch_size(self.gpq_config.input_shape)
        if isinstance(images, (np.ndarray, ImageFiles)):
            self.check_inputs(images)
            images = eval_input(
                images, self.input_pipeline, batch_size, normalized=not self.normalize_pixels
            )
            batch_size = None
        with reraise_file_errors(), self.weights_kept_on_error():
            features = self.predict(images, batch_size=batch_size, verbose=verbose)
        return np.asarray(features, dtype=np.float32)

    @property
    def codebook(self):
        """The raw learned codebook Z (K, M*d), as the original uses it at retrieval."""
        return np.asarray(ops.convert_to_numpy(self.quantizer.codewords), np.float32)

    @property
    def refined_codebook(self):
        """Z' = SA(intra_norm(C), Z) (K, M*d), the codebook training quantises with."""
        return np.asarray(
            ops.convert_to_numpy(self.quantizer.codebook(self.classifier.normalized_prototypes())),
            np.float32,
        )

    @property
    def fingerprint(self):
        """A short SHA-256 of what retrieval depends on (Z, C, alpha, M): an index built with this
        model records it, and refuses to be searched with another model's features."""
        import hashlib

        digest = hashlib.sha256(
            f"{self.gpq_config.num_subspaces}:{self.gpq_config.alpha}:".encode()
        )
        digest.update(np.ascontiguousarray(self.codebook, "<f4").tobytes())
        digest.update(np.ascontiguousarray(self.prototypes, "<f4").tobytes())
        return digest.hexdigest()[:16]

    @property
    def prototypes(self):
        """The raw class prototypes C (classes, M*d)."""
        return np.asarray(ops.convert_to_numpy(self.classifier.prototypes), np.float32)

    # --- training --------------------------------------------------------------------------------
    def compile(self, optimizer=None, **kwargs):
        """As `keras.Model.compile`; the optimiser defaults to the original's
        (`default_optimizer`), a `ScaledAdam` with `backbone_learning_rate_multiplier` != 1 (the
        backbone's layers but the head at that share of the rate). Another optimizer is refused
        then: Keras' own have one rate for every variable."""
        multipliers = self.learning_rate_multipliers()
        if optimizer is None:
            optimizer = default_optimizer(self.gpq_config, multipliers)
        elif multipliers and not isinstance(
            getattr(optimizer, "inner_optimizer", optimizer), ScaledAdam
        ):
            raise ValueError(
                f"backbone_learning_rate_multiplier={self.backbone_learning_rate_multiplier} "
                f"needs gpq_keras.optimizers.ScaledAdam (or compile() without an optimizer); got "
                f"{type(optimizer).__name__}"
            )
        super().compile(optimizer=optimizer, **kwargs)

    def learning_rate_multipliers(self):
        """{variable path: `backbone_learning_rate_multiplier`} of the backbone's trainable
        variables but the head's; empty at 1."""
        if self.backbone_learning_rate_multiplier == 1.0:
            return {}
        return {
            v.path: self.backbone_learning_rate_multiplier
            for layer in self.backbone_layers()
            for v in layer.trainable_variables
        }

    def get_compile_config(self):
        return (
            {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}
            if self.compiled
            else None
        )

    def compile_from_config(self, config):
        self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]))
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Every weight exists from `__init__` and `compile` adds no Keras loss or metric, so only
        the optimizer may need building. (Keras' TensorFlow trainer would instead all-reduce the
        first batch of a distributed dataset, which fails for the {"labeled", "unlabeled"} inputs
        under `MultiWorkerMirroredStrategy`.)"""
        if self.optimizer is not None and not self.optimizer.built:
            with strategy_of(self).scope():
                self.optimizer.build(self.trainable_variables)

    def label_matrix(self, labels):
        """Y (B, classes) float32 from int class ids (B,) or multi-hot (B, classes)."""
        if len(labels.shape) == 1:
            return ops.one_hot(ops.cast(labels, "int32"), self.gpq_config.num_classes)
        return ops.cast(labels, "float32")

    def compute_losses(self, labeled, unlabeled, labels, training):
        """The paper's objective on one labeled and one unlabeled batch -> {name: scalar} for
        `LOSS_NAMES`: loss = npq + lambda1 * entropy + lambda2 * cls."""
        cfg = self.gpq_config
        y = self.label_matrix(labels)
        # Each stream goes through F on its own, so batch norm uses (and updates) per-stream
        # statistics.
        f = self.intra_norm(self(labeled, training=training))
        g = self.intra_norm(self.reversal(self(unlabeled, training=training)))
        q = self.quantizer(
            f, prototypes=self.classifier.normalized_prototypes()
        )  # SA(Z', f), Z' = SA(P, Z)
        all_y, all_q = self.gather_global_batch(y, q)  # the global batch's positives and negatives
        npq = n_pair_pq_loss(
            y, f, q, cfg.num_subspaces, cfg.reg_lambda, all_labels=all_y, all_descriptors=all_q
        )
        cls = classification_loss(y, self.classifier(f))
        ent = subspace_entropy_loss(self.classifier(g))
        loss = npq + cfg.lambda1 * ent + cfg.lambda2 * cls
        return {"loss": loss, "npq_loss": npq, "cls_loss": cls, "entropy_loss": ent}

    def _unpack(self, data):
        """(labeled images, unlabeled images or None, labels) of a `fit`/`evaluate` batch."""
        inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(inputs, dict):
            return inputs["labeled"], inputs.get("unlabeled"), labels
        return inputs, None, labels

    def _record(self, losses):
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if num_workers(strategy_of(self)) > 1:
            # Keras' TensorFlow trainer reduces each log of a multi-worker step with
            # `strategy.reduce("MEAN", value, axis=0)`, which needs a batch axis: (1,) gives the
            # same scalar.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def loss_and_gradients(self, data):
        """({name: loss} for `LOSS_NAMES`, gradients of losses["loss"] in `trainable_variables`'
        order) of one `fit` batch, as NumPy, on any backend, computed as `train_step` computes them.
        Like a training step it updates batch norm's moving statistics; it changes no weight and no
        optimizer state."""
        losses, grads = self.gradients_of_batch(*self._training_batch(data))
        to_numpy = ops.convert_to_numpy
        losses = {name: float(to_numpy(value)) for name, value in losses.items()}
        return losses, [to_numpy(g) for g in grads]

    def _training_batch(self, data):
        labeled, unlabeled, labels = self.checked_batch(self._unpack(data))
        if unlabeled is None:
            raise ValueError('GPQ.fit needs inputs {"labeled": images, "unlabeled": images}')
        return labeled, unlabeled, labels

    def _evaluation_batch(self, data):
        """(labeled, unlabeled, labels) of an `evaluate` batch: without an unlabeled stream the
        entropy is measured on the labeled images."""
        labeled, unlabeled, labels = self.checked_batch(self._unpack(data))
        return labeled, labeled if unlabeled is None else unlabeled, labels

    # --- serialisation ---------------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "config": self.gpq_config.to_dict(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "normalize_pixels": self.normalize_pixels,
            "freeze_backbone": self.freeze_backbone,
            "backbone_learning_rate_multiplier": self.backbone_learning_rate_multiplier,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.setdefault(
            "normalize_pixels", False
        )  # saved before the model normalised: normalised inputs
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
