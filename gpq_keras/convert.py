"""Compatibility with the original TF1 release: convert its checkpoint, load its
`ImageNet_pretrained.mat`.

The original code (TensorFlow 1.14 + tflearn) saved every global variable with `tf.train.Saver`; the
names follow its graph (youngkyunJang/GPQ, `utils/GPQ_network.py`):

- `Z` (K, M*d) and `C` (classes, M*d) at the top level;
- `Fixed_VGG/conv2d/{kernel,bias}`, `Fixed_VGG/conv2d_1/...` ... `Fixed_VGG/conv2d_9/...`: the ten
  convs, in network order by their numeric suffix;
- `Fixed_VGG/batch0`, `batch0-1`, `batch1`, ... `batch3-2`: batch norm `beta`, `gamma`,
  `moving_mean` (already zero-debiased) and `moving_variance`;
- `Fixed_VGG/dense/{kernel,bias}`: the feature layer (768 -> M*d).

Left-overs of training are skipped: zero-debias accumulators (`.../biased`, `.../local_step`), Adam
slots (`<var>/Adam`, `<var>/Adam_1`) and `beta1_power`, `beta2_power`. Anything else stops the
conversion.

```python
model = convert_tf1_checkpoint("checkpoints/original/48bits_example.ckpt")
save_atomic(model, "checkpoints/converted/gpq_cifar10_48bit.keras")  # from gpq_keras.model
```
"""

import collections
import dataclasses
import os
import re
import warnings

import numpy as np

from gpq_keras.backbones import CONV_BLOCKS, FEATURE_LAYER
from gpq_keras.config import GPQConfig, rename_legacy_keys

# --- the original's names: Keras layer (gpq_keras.backbones) -> TF1 scope under `Fixed_VGG` -------
TF1_SCOPE = "Fixed_VGG"
# TF1 numbers the convs conv2d, conv2d_1, ... conv2d_9 in network order (`_conv_scopes` resolves the
# suffixes).
TF1_CONV_SCOPES = ("conv2d",) + tuple(f"conv2d_{i}" for i in range(1, len(CONV_BLOCKS)))
TF1_BATCH_NORM_SCOPES = {
    "batch0": "batch0",
    "batch0_1": "batch0-1",
    "batch1": "batch1",
    "batch1_1": "batch1-1",
    "batch2": "batch2",
    "batch2_1": "batch2-1",
    "batch2_2": "batch2-2",
    "batch3": "batch3",
    "batch3_1": "batch3-1",
    "batch3_2": "batch3-2",
}
TF1_FEATURE_SCOPE = "dense"

# d of every released configuration (config.py: subspace_dim = 12 for 12..48 bits)
ORIGINAL_SUBSPACE_DIM = 12
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_CONV_RE = re.compile(rf"^{TF1_SCOPE}/conv2d(?:_(\d+))?/")
_SKIP_RULES = (
    (re.compile(r"(?:^|/)(?:biased|local_step)(?:/|$)"), "zero-debias accumulator"),
    (re.compile(r"/Adam(?:_\d+)?$"), "Adam slot"),
    (re.compile(r"^beta[12]_power(?:_\d+)?$"), "Adam power accumulator"),
)
_LISTED = 3  # names per kind on the one-line summary of an error


class ConversionError(ValueError):
    """The original files do not fit the model: names and shapes that could not be placed.

    The first line of the message is a summary naming the first few offenders; the full lists
    follow, one entry per line, and are also kept as attributes.

    Attributes:
        source: str, the checkpoint prefix or .mat path.
        missing: list of (TF1 name, expected shape, Keras weight) the file does not hold.
        unexpected: list of (TF1 name, shape) the converter cannot place.
        mismatched: list of (TF1 name, shape in the file, Keras weight, shape in the model).
        note: str or None, what else went wrong.
    """

    def __init__(
        self, source, missing=(), unexpected=(), mismatched=(), note=None, action="convert"
    ):
        self.source = str(source)
        self.action = action
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.note = note
        super().__init__(self._message())

    def _message(self):
        def listed(count_and_kind, items):
            shown = ", ".join(items[:_LISTED])
            more = f", ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else ""
            return f"{count_and_kind} ({shown}{more})"

        parts, details = [], []
        if self.missing:
            parts.append(
                listed(
                    f"{len(self.missing)} missing", [f"{n} {_fmt(s)}" for n, s, _ in self.missing]
                )
            )
            details += [f"  missing     {n} {_fmt(s)} (for {k})" for n, s, k in self.missing]
        if self.unexpected:
            parts.append(
                listed(
                    f"{len(self.unexpected)} unplaceable",
                    [f"{n} {_fmt(s)}" for n, s in self.unexpected],
                )
            )
            details += [f"  unplaceable {n} {_fmt(s)}" for n, s in self.unexpected]
        if self.mismatched:
            parts.append(
                listed(
                    f"{len(self.mismatched)} shape mismatch(es)",
                    [f"{n} {_fmt(s)} vs model {_fmt(ks)}" for n, s, _, ks in self.mismatched],
                )
            )
            details += [
                f"  mismatch    {n} {_fmt(s)} in the file, {k} {_fmt(ks)} in the model"
                for n, s, k, ks in self.mismatched
            ]
        if self.note:
            parts.append(self.note)
        return "\n".join([f"{self.source}: cannot {self.action}: " + "; ".join(parts)] + details)


@dataclasses.dataclass
class ConversionReport:
    """What `convert_tf1_checkpoint` did.

    Attributes:
        source: the checkpoint prefix.
        config: the `GPQConfig` of the converted model.
        mapped: list of (TF1 name, Keras weight, shape), one per model weight, in model order.
        skipped: list of (TF1 name, shape, reason) for the training left-overs that were skipped.
    """

    source: str
    config: GPQConfig
    mapped: list
    skipped: list

    def table(self):
        """A plain-text table of the mapping, then the skipped variables counted by kind."""
        cfg = self.config
        lines = [
            f"{self.source}: GPQ M={cfg.num_subspaces} K={cfg.num_codewords} "
            f"d={cfg.subspace_dim} ({cfg.bits} bits), {cfg.num_classes} classes, "
            f"filters={list(cfg.filters)}, "
            f"image_shape={list(cfg.image_shape)}, retrieval_mode={cfg.retrieval_mode}"
        ]
        width = max([len("TF1 variable")] + [len(n) for n, _, _ in self.mapped])
        kwidth = max([len("Keras weight")] + [len(k) for _, k, _ in self.mapped])
        lines.append(f"{'TF1 variable':<{width}}  {'Keras weight':<{kwidth}}  shape")
        lines += [f"{n:<{width}}  {k:<{kwidth}}  {_fmt(s)}" for n, k, s in self.mapped]
        counts = {}
        for _, _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        skipped = ", ".join(f"{c} {r}{'s' if c != 1 else ''}" for r, c in sorted(counts.items()))
        lines.append(
            f"mapped {len(self.mapped)} variables; skipped {len(self.skipped)}"
            + (f" ({skipped})" if skipped else "")
        )
        return "\n".join(lines)


@dataclasses.dataclass
class MatLoadReport:
    """What `load_imagenet_mat` did.

    Attributes:
        source: the .mat path.
        loaded: list of (key, Keras weight, shape), one per initialised backbone weight.
        unexpected: list of (key, shape) in the file that the original would not load either
            (ignored).
    """

    source: str
    loaded: list
    unexpected: list


def _fmt(shape):
    return "[?]" if shape is None else "[" + ", ".join(str(int(v)) for v in shape) + "]"


def _skip_reason(name):
    for pattern, reason in _SKIP_RULES:
        if pattern.search(name):
            return reason
    return None


def _conv_scopes(names):
    """The TF1 scopes of the ten convs, in network order.

    TF1 numbers layers `conv2d`, `conv2d_1`, ...: the order is the integer suffix (so `conv2d_10`
    comes after `conv2d_9`). A run of exactly ten consecutive suffixes is taken in order whatever it
    starts at; anything else is matched against the standard names `conv2d` .. `conv2d_9`, so the
    missing ones are named.
    """
    suffixes = sorted({int(m.group(1) or 0) for m in map(_CONV_RE.match, names) if m})
    count = len(CONV_BLOCKS)
    if (
        len(suffixes) == count
        and suffixes[0]
        and suffixes == list(range(suffixes[0], suffixes[0] + count))
    ):
        return [f"{TF1_SCOPE}/conv2d_{suffixes[0] + i}" for i in range(count)]
    return [f"{TF1_SCOPE}/{scope}" for scope in TF1_CONV_SCOPES]


def tf1_layer_names():
    """{Keras layer name: TF1 scope} for every backbone layer with weights, in the standard
    numbering, e.g. 'conv0_1' -> 'Fixed_VGG/conv2d_1', 'batch0_1' -> 'Fixed_VGG/batch0-1'."""
    names = {}
    for (_, conv, bn), tf1_conv in zip(CONV_BLOCKS, TF1_CONV_SCOPES):
        names[conv] = f"{TF1_SCOPE}/{tf1_conv}"
        names[bn] = f"{TF1_SCOPE}/{TF1_BATCH_NORM_SCOPES[bn]}"
    names[FEATURE_LAYER] = f"{TF1_SCOPE}/{TF1_FEATURE_SCOPE}"
    return names


_Target = collections.namedtuple("_Target", ["path", "variable", "hook"])
_Target.__new__.__defaults__ = (None,)


def _fold_bias(bias, moving_mean):
    """A conv bias b before batch norm, folded into the moving mean: BN(x + b) with mean m is BN(x)
    with mean m - b (in training the batch mean absorbs b)."""
    return moving_mean - bias


def _backbone_targets(backbone, names, with_moving_stats=True, with_dense=True):
    """{TF1 name: _Target(Keras weight path, variable, hook)} for the backbone, in the order to port
    them, conv scopes resolved from `names`. A hook(value, current) computes what is assigned from
    the file's value and the variable's current one (the conv biases of a bias-free backbone are
    folded into the moving means, after those are ported)."""
    targets = {}
    for (_, conv, bn), scope in zip(CONV_BLOCKS, _conv_scopes(names)):
        tf1_bn = TF1_BATCH_NORM_SCOPES[bn]
        conv_layer, bn_layer = backbone.get_layer(conv), backbone.get_layer(bn)
        targets[f"{scope}/kernel"] = _Target(f"backbone/{conv}/kernel", conv_layer.kernel)
        for weight in _BN_WEIGHTS if with_moving_stats else ("gamma", "beta"):
            targets[f"{TF1_SCOPE}/{tf1_bn}/{weight}"] = _Target(
                f"backbone/{bn}/{weight}", getattr(bn_layer, weight)
            )
        if conv_layer.use_bias:
            targets[f"{scope}/bias"] = _Target(f"backbone/{conv}/bias", conv_layer.bias)
        else:
            targets[f"{scope}/bias"] = _Target(
                f"backbone/{bn}/moving_mean (- conv bias)", bn_layer.moving_mean, _fold_bias
            )
    if with_dense:
        layer = backbone.get_layer(FEATURE_LAYER)
        for weight in ("kernel", "bias"):
            targets[f"{TF1_SCOPE}/{TF1_FEATURE_SCOPE}/{weight}"] = _Target(
                f"backbone/{FEATURE_LAYER}/{weight}", getattr(layer, weight)
            )
    return targets


def _port(target, value):
    """Assign a file's value to a target's variable, through its hook."""
    current = np.asarray(target.variable.numpy())
    value = np.asarray(value, dtype=current.dtype)
    target.variable.assign(target.hook(value, current) if target.hook else value)


def _model_targets(model, names):
    targets = _backbone_targets(model.backbone, names)
    targets["Z"] = _Target("quantizer/codewords", model.quantizer.codewords)
    targets["C"] = _Target("classifier/prototypes", model.classifier.prototypes)
    return targets


def _checkpoint_prefix(prefix):
    """Accept the prefix or any of its files (`.index`, `.meta`, `.data-*`); check it exists."""
    prefix = os.fspath(prefix)
    prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", prefix)
    if not os.path.isfile(prefix + ".index") and not os.path.isdir(prefix):
        raise FileNotFoundError(
            f"No TF1 checkpoint at {prefix} (expected {prefix}.index and "
            f"{prefix}.data-00000-of-00001)"
        )
    return prefix


def _read_checkpoint(prefix):
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        note = f"not a readable TF checkpoint ({type(exc).__name__}: {first_line})"
        raise ConversionError(prefix, note=note) from exc
    return reader, {
        name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()
    }


def infer_config(shapes, overrides=None):
    """A `GPQConfig` from a checkpoint's {name: shape}, with fields in `overrides` taking
    precedence.

    K and the number of classes come from `Z` (K, M*d) and `C` (classes, M*d); the stage widths and
    image channels from the conv kernels. Shapes fix only M*d, not M and d apart: d defaults to the
    original's 12 (M = M*d / 12) unless `overrides` gives `num_subspaces` or `subspace_dim`. Height
    and width default to 32x32. `retrieval_mode` defaults to `"original"`.
    """
    overrides = rename_legacy_keys(overrides or {})
    source = overrides.pop("_source", "checkpoint")
    missing = [
        (name, None, target)
        for name, target in (("Z", "quantizer/codewords"), ("C", "classifier/prototypes"))
        if name not in shapes or len(shapes[name]) != 2
    ]
    if missing:
        raise ConversionError(
            source,
            missing=missing,
            note="Z and C (2-D) are needed to infer the config; pass a full config otherwise",
        )
    (num_codewords, dim), (num_classes, c_dim) = shapes["Z"], shapes["C"]
    if dim != c_dim:
        raise ConversionError(
            source,
            mismatched=[("C", shapes["C"], "classifier/prototypes", (num_classes, dim))],
            note=f"Z holds {dim}-d codewords but C {c_dim}-d prototypes",
        )
    values = {"num_codewords": num_codewords, "num_classes": num_classes}
    num_subspaces, subspace_dim = overrides.get("num_subspaces"), overrides.get("subspace_dim")
    if num_subspaces is None and subspace_dim is None:
        if dim % ORIGINAL_SUBSPACE_DIM:
            raise ConversionError(
                source,
                note=f"M*d = {dim} is not a multiple of the original d = "
                f"{ORIGINAL_SUBSPACE_DIM}; give num_subspaces or subspace_dim in the config",
            )
        subspace_dim = ORIGINAL_SUBSPACE_DIM
    for name, given in (("subspace_dim", subspace_dim), ("num_subspaces", num_subspaces)):
        if isinstance(given, int) and given > 0 and dim % given:
            raise ConversionError(
                source, note=f"{name}={given} does not divide M*d = {dim} (the width of Z)"
            )
    if num_subspaces is None and isinstance(subspace_dim, int) and subspace_dim > 0:
        num_subspaces = dim // subspace_dim
    if subspace_dim is None and isinstance(num_subspaces, int) and num_subspaces > 0:
        subspace_dim = dim // num_subspaces
    values.update(num_subspaces=num_subspaces, subspace_dim=subspace_dim)
    kernels = [shapes.get(f"{scope}/kernel") for scope in _conv_scopes(shapes)]
    if all(k is not None and len(k) == 4 for k in kernels):
        first = {}
        for (stage, *_), kernel in zip(CONV_BLOCKS, kernels):
            first.setdefault(stage, kernel[3])
        values["filters"] = tuple(int(first[s]) for s in sorted(first))
        values["image_shape"] = (32, 32, int(kernels[0][2]))
    values["retrieval_mode"] = "original"
    values.update(overrides)
    try:
        return GPQConfig.from_dict(values)
    except ValueError as exc:
        raise ConversionError(source, note=f"the inferred config is invalid: {exc}") from exc


def convert_tf1_checkpoint(prefix, config=None, return_report=False):
    """A `GPQ` model holding the weights of an original TF1 checkpoint.

    Reads the checkpoint with `tf.train.load_checkpoint` (no TF1 graph is built) and places every
    variable by its name (module docstring). Nothing is returned unless every model weight was
    filled from a variable of the same shape and every variable was either placed or is a known
    training left-over.

    ```python
    model, report = convert_tf1_checkpoint(
        "checkpoints/original/48bits_example.ckpt", return_report=True
    )
    print(report.table())
    ```

    Args:
        prefix: str, the checkpoint prefix (`.../48bits_example.ckpt`; a path to one of its files
            works too).
        config: None, a dict or a `GPQConfig`. None infers everything from the shapes
            (`infer_config`): M, K, d (d = 12, the original's), classes, stage widths, channels,
            32x32 images, `retrieval_mode="original"`. A dict overrides some inferred fields, e.g.
            `{"image_shape": [16, 16, 3], "num_subspaces": 3}`. A `GPQConfig` is used as given and
            checked against the shapes.
        return_report: bool, also return a `ConversionReport` (the mapping table). Default False.

    Returns:
        The `GPQ` model, or `(model, report)` with `return_report=True`.

    Raises:
        FileNotFoundError: no checkpoint at `prefix`.
        ConversionError: variables missing, unplaceable or of the wrong shape (all listed), or a
            config that cannot be inferred.
    """
    from gpq_keras.model import GPQ

    prefix = _checkpoint_prefix(prefix)
    reader, shapes = _read_checkpoint(prefix)
    if config is None or isinstance(config, dict):
        config = infer_config(shapes, {**(config or {}), "_source": prefix})
    elif not isinstance(config, GPQConfig):
        raise TypeError(
            f"config must be None, a dict or a GPQConfig. Received: {type(config).__name__}"
        )
    model = GPQ(config=config)

    targets = _model_targets(model, shapes)
    skipped, unexpected, mismatched = [], [], []
    for name in sorted(shapes):
        shape = shapes[name]
        if name in targets:
            path, variable, _ = targets[name]
            if shape != tuple(variable.shape):
                mismatched.append((name, shape, path, tuple(variable.shape)))
        elif _skip_reason(name):
            skipped.append((name, shape, _skip_reason(name)))
        else:
            unexpected.append((name, shape))
    missing = [
        (name, tuple(variable.shape), path)
        for name, (path, variable, _) in targets.items()
        if name not in shapes
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(prefix, missing, unexpected, mismatched)

    rows = []
    for name, target in targets.items():  # model order; folds after what they fold into
        _port(target, reader.get_tensor(name))
        rows.append((name, target.path, tuple(target.variable.shape)))
    report = ConversionReport(source=prefix, config=config, mapped=rows, skipped=skipped)
    return (model, report) if return_report else model


def _fit_shape(value, shape):
    """`value` as `shape` when it equals it up to singleton axes (loadmat gives 1-D arrays
    as (1, N))."""
    value = np.asarray(value)
    if value.shape == tuple(shape):
        return value
    if value.size == int(np.prod(shape)) and np.squeeze(value).shape == tuple(
        d for d in shape if d != 1
    ):
        return value.reshape(shape)
    return None


def load_imagenet_mat(model, path):
    """Initialise the backbone from the original `ImageNet_pretrained.mat`, as the original's
    train.py does.

    Every trainable `Fixed_VGG` weight except the final dense kernel and bias (the conv kernels and
    biases, batch-norm gamma and beta) is read from the key `<TF1 name>:0`, e.g.
    `Fixed_VGG/conv2d/kernel:0`, and squeezed to the model's shape. Moving statistics and the dense
    layer keep their values.

    ```python
    report = load_imagenet_mat(model, "checkpoints/original/ImageNet_pretrained.mat")
    ```

    Args:
        model: a `GPQ` (its `.backbone` is loaded) or a `VGGBackbone`.
        path: str, the .mat file.

    Returns:
        A `MatLoadReport`; keys the original would not load either are listed in `.unexpected` and
        warned about, not loaded.

    Raises:
        FileNotFoundError: no file at `path`.
        ConversionError: keys missing or of the wrong shape (all listed); nothing is loaded then.
    """
    import scipy.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .mat file at {path}")
    try:
        contents = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a file that is not a .mat
        raise ConversionError(
            path, note=f"not a readable .mat file ({type(exc).__name__}: {exc})", action="load"
        ) from exc
    values = {key: np.asarray(value) for key, value in contents.items() if not key.startswith("__")}
    backbone = getattr(model, "backbone", model)
    names = [key[:-2] if key.endswith(":0") else key for key in values]
    targets = {
        f"{name}:0": target
        for name, target in _backbone_targets(
            backbone, names, with_moving_stats=False, with_dense=False
        ).items()
    }

    missing, mismatched, ready = [], [], []
    for key, target in targets.items():
        shape = tuple(target.variable.shape)
        if key not in values:
            missing.append((key, shape, target.path))
            continue
        value = _fit_shape(values[key], shape)
        if value is None:
            mismatched.append((key, tuple(values[key].shape), target.path, shape))
        else:
            ready.append((key, target, value))
    if missing or mismatched:
        raise ConversionError(path, missing=missing, mismatched=mismatched, action="load")
    unexpected = [(key, tuple(value.shape)) for key, value in values.items() if key not in targets]
    if unexpected:
        warnings.warn(
            f"{path}: {len(unexpected)} key(s) not loaded (the original does not load them "
            "either): " + ", ".join(key for key, _ in unexpected),
            stacklevel=2,
        )
    for _, target, value in ready:
        _port(target, value)
    return MatLoadReport(
        source=path,
        loaded=[(k, t.path, tuple(t.variable.shape)) for k, t, _ in ready],
        unexpected=unexpected,
    )
