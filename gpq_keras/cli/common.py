"""What the command modules share: errors, parser pieces, model and data loading, the path guard.

Importing it loads the standard library only; everything heavy is imported inside the functions.
"""

import argparse
import os
import sys

from gpq_keras.config import STRATEGIES  # the standard library only: cheap to import

# `gpq_keras.distribute.NAMES` (a test keeps them equal): tf.distribute's and JAX's
STRATEGY_NAMES = STRATEGIES

IMAGES_HELP = (
    "a folder of images (any depth; classes from its sub-folders when every image is in one) or a "
    "glob such as 'photos/**/*.jpg'; give it again for more (labeled folders and an unlabeled "
    "pool: the pool's images get no class)"
)
DATA_HELP = (
    "data spec: digits | cifar10:DIR | tfds:cifar10[:DATA_DIR] | nuswide:LIST_DIR:IMAGE_ROOT | "
    "list:LIST_DIR[:IMAGE_ROOT] | npz:FILE | folder:DIR"
)
PROTOCOL_HELP = (
    "which images are queries, labeled, unlabeled and database: given (the spec's own parts; a "
    "folder: every labeled image trains), gpq (the paper's split), unseen[:FRACTION] (train on "
    "FRACTION of the classes, 0.75, retrieve among the others), cifar10-1, cifar10-2 "
    "(DeepHash's); default gpq for digits, cifar10 and tfds, given for the others"
)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C: printed as one line, exit status 130."""


# --- parsing --------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: `gpq train: error: ... (see gpq train --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum):
    """An argparse type: an int >= minimum."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def add_command(sub, name, help_text, example, func):
    """A sub-command's parser, with `help_text` as its description, `example` in its epilog and
    `func` (called with the parsed arguments) as its handler."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_model_and_data(parser, model_help="a GPQ .keras file"):
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--data", required=True, help=DATA_HELP)
    add_protocol_flags(parser)
    add_reader_flags(parser)
    add_strategy_flag(parser, "encode")


def protocol_name(text):
    """An argparse type: a protocol of `gpq_keras.data.protocols` (parsing imports NumPy only)."""
    from gpq_keras.data.protocols import parse_protocol

    try:
        parse_protocol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_protocol_flags(parser, seed=True):
    """`--protocol P` and, unless the command has its own, `--seed` (the protocol's draws)."""
    parser.add_argument("--protocol", type=protocol_name, metavar="P", help=PROTOCOL_HELP)
    if seed:
        parser.add_argument(
            "--seed",
            type=int,
            default=0,
            help="the protocol's seed (unseen's classes, cifar10-1's draws); a run's own: see "
            "its run.json (0)",
        )


def add_unlabeled_flag(parser):
    parser.add_argument(
        "--unlabeled",
        metavar="DIR_OR_GLOB",
        help="a folder (any depth) or glob of unlabeled images for the unlabeled stream "
        "(folder:, list: without unlabeled.txt, nuswide:, npz: without x_unlabeled); without it "
        "the labeled images feed that stream too",
    )


def add_strategy_flag(parser, what):
    parser.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default="auto",
        help=f"{what} on several devices: one device; TensorFlow's tf.distribute: mirrored (this "
        "machine's GPUs), multi-worker (the machines of TF_CONFIG; only the chief writes); JAX's "
        "data-parallel (keras.distribution.DataParallel over every device); auto = mirrored or "
        "data-parallel when more than one GPU is visible (auto)",
    )


# Pillow's MAX_IMAGE_PIXELS, `gpq_keras.data.images.DEFAULT_MAX_PIXELS` (a test keeps them equal):
# written out here so that parsing imports nothing
MAX_PIXELS = 89_478_485


def seconds(text):
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


# gpq_keras.backbones' names, written out so that parsing imports no Keras (a test keeps them equal)
APPLICATIONS = ("resnet50", "efficientnetv2_b0", "convnext_tiny", "mobilenet_v3_small")
HUB_PREFIX = "kerashub:"


def add_backbone_flags(parser, names, required=False):
    """--backbone (of `names`, a help text) and --backbone-weights (`gpq train`, `gpq embed`);
    `backbone_weights(args)` reads the second."""
    parser.add_argument("--backbone", metavar="NAME", required=required, help=names)
    parser.add_argument(
        "--backbone-weights",
        metavar="imagenet|none|PATH",
        help="the backbone's starting weights: imagenet (Keras downloads them once, which needs "
        "the network), none (random) or a local weights file of the backbone (.h5 of "
        "keras.applications, or .weights.h5) (default: imagenet for a keras.applications name, "
        "the preset's own for kerashub:, none for vgg, mlp and identity)",
    )


def backbone_weights(args):
    """--backbone-weights as `gpq_keras.backbones` takes it: "imagenet", None (random, or a
    kerashub preset's own weights) or a path. By default "imagenet" for a keras.applications name
    (pretrained is why one picks them), None for the others."""
    weights = args.backbone_weights
    if weights is None:
        return "imagenet" if args.backbone in APPLICATIONS else None
    if weights.lower() in ("none", "imagenet"):
        return None if weights.lower() == "none" else "imagenet"
    return weights


def add_reader_flags(parser):
    """`--max-pixels N` and `--skip-unreadable`, for a command that decodes image files; their
    values go to the readers as `reader_options(args)`."""
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse an image whose header declares more than N pixels (width x height), "
        f"before decoding it ({MAX_PIXELS:,}: Pillow's bound against decompression bombs)",
    )
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out the image files that cannot be read (not a regular file, over "
        "--max-pixels, not decodable) and list them on stderr; without it the first one stops "
        "the command, naming it, and nothing is written",
    )


def reader_options(args):
    """{max_pixels, skip_unreadable} of `add_reader_flags`, for the readers of image files."""
    return {"max_pixels": args.max_pixels, "skip_unreadable": args.skip_unreadable}


def add_wait_flag(parser):
    """`--wait SECONDS`, for a command that rewrites an index (which it locks meanwhile)."""
    parser.add_argument(
        "--wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="another gpq command writing the same index holds its lock: wait at most SECONDS "
        "for it, then give up (60)",
    )


def report_skipped(skipped):
    """Print, to stderr, each (path, reason) that `--skip-unreadable` left out (one escaped line
    each), then their count."""
    from gpq_keras.files import display_path

    for path, reason in skipped:
        shown = display_path(path)
        reason = " ".join(str(reason).split())
        print(
            f"skipped {reason if reason.startswith(shown) else f'{shown}: {reason}'}",
            file=sys.stderr,
        )
    if skipped:
        count = len(skipped)
        print(
            f"{count} unreadable file{'' if count == 1 else 's'} skipped (--skip-unreadable)",
            file=sys.stderr,
        )


def image_listing(args):
    """The image files of `--images` (`gpq_keras.data.user.list_images`; given more than once,
    `merge_listings`: an unlabeled pool beside class folders gets no class), listed once per
    command: by the path guard, which checks every output against them, then by the command."""
    listing = getattr(args, "image_files", None)
    if listing is None:
        from gpq_keras.data.user import list_images, merge_listings

        listing = args.image_files = merge_listings(
            list_images(spec, skip_unreadable=args.skip_unreadable) for spec in image_specs(args)
        )
    return listing


def image_specs(args):
    """The folders and globs of `--images` (given once or more) as a list."""
    images = getattr(args, "images", None)
    if not images:
        return []
    return [images] if isinstance(images, str) else list(images)


# --- loading and writing --------------------------------------------------------------------------


def quiet_tensorflow():
    """Silence TensorFlow's C++ start-up lines (unless the user set the level) before it is
    imported.

    `TF_CPP_MIN_LOG_LEVEL` is not yet in force while TensorFlow's libraries load: their lines then
    come before absl's logging starts ("All log messages before absl::InitializeLog() ..."). So the
    import of `tensorflow`, whenever it happens, runs with the process's stderr in a temporary file,
    and the lines below that level are dropped from it; the rest is written out after the import.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())


# absl's line before its logging starts, and glog-style lines: a level letter, then MMDD
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_LOG_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}


class _QuietImport:
    """A `sys.meta_path` finder that runs the first import of `tensorflow` under
    `_filtered_stderr`, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with _filtered_stderr():
                run(module)

        spec.loader.exec_module = exec_module
        return spec


class _filtered_stderr:
    """File descriptor 2 goes to a temporary file; on exit, its lines are written back to stderr
    but for those below `TF_CPP_MIN_LOG_LEVEL` and absl's preamble."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.close()
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            level = 0
        kept = [
            line
            for line in text.splitlines(keepends=True)
            if not line.startswith(_ABSL_PREAMBLE)
            and not (
                line[:1] in _LOG_LEVELS and line[1:5].isdigit() and _LOG_LEVELS[line[0]] < level
            )
        ]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def load_strategy(args):
    """The `--strategy` of the command (created first: a multi-worker strategy sets up its
    collectives before TensorFlow runs anything else) and whether this process writes the outputs
    (not a non-chief worker)."""
    from gpq_keras.distribute import is_chief, make_strategy

    strategy = make_strategy(args.strategy)
    return strategy, is_chief(strategy)


def check_finite_model(model, flag, path):
    """Refuse, naming `flag PATH`, a model with NaN or infinite weights (a run that diverged):
    its features and codebook would give meaningless codes and distances."""
    import numpy as np
    from keras import ops

    from gpq_keras.files import display_path

    bad = [w.path for w in model.weights if not np.isfinite(ops.convert_to_numpy(w)).all()]
    if bad:
        raise CLIError(
            f"{flag} {display_path(path)}: {len(bad)} of its {len(model.weights)} weight tensors "
            f"hold NaN or infinite values (e.g. {bad[0]}; a training run that diverged); not "
            "using it"
        )


def load_model(args):
    """(model, whether this process writes the outputs), the model loaded under `--strategy`
    and refused, naming `--model PATH`, when its weights are not finite."""
    from gpq_keras.model import load_gpq

    strategy, chief = load_strategy(args)
    with strategy.scope():
        model = load_gpq(args.model)
    check_finite_model(model, "--model", args.model)
    return model, chief


def load_data(args, image_shape=None, drop_undecodable=True, **options):
    """The `Split` of `--data` with `--protocol`, `--seed` and `--unlabeled` where the command has
    them, its image files read with `--max-pixels` and `--skip-unreadable` (the files skipped are
    listed on stderr), and those of a file-based spec read at `image_shape` (a model's input,
    (H, W, C)); `options` go to the loader.

    With `--skip-unreadable` (and `drop_undecodable`) the files of a streamed spec are also decoded
    once, and those whose pixels do not decode are left out, as those with a bad header are when
    the data loads: a stream then never meets one, and every command sees the same parts."""
    from gpq_keras.data import FILE_SOURCES, load_data, spec_kind

    if hasattr(args, "max_pixels"):
        options.update(reader_options(args))
    if spec_kind(args.data) in FILE_SOURCES and image_shape is not None:
        height, width = (int(v) for v in image_shape[:2])
        options["image_size"] = height if height == width else (height, width)
    split = load_data(
        args.data,
        protocol=getattr(args, "protocol", None),
        seed=getattr(args, "seed", 0),
        unlabeled=getattr(args, "unlabeled", None),
        **options,
    )
    skipped = list(getattr(split, "skipped", None) or [])
    if drop_undecodable and getattr(args, "skip_unreadable", False) and split.streamed:
        from gpq_keras.data.check import undecodable_files, without_files

        bad = undecodable_files(split)
        if bad:
            split = without_files(split, [path for path, _ in bad])
            skipped += bad
    if getattr(args, "report_skipped", True):  # `gpq data check` reports them itself
        report_skipped(skipped)
    return split


def load_model_and_data(args):
    """(model, split, whether this process writes the outputs), the model loaded under
    `--strategy`; image files are read at the model's input size."""
    model, chief = load_model(args)
    split = load_data(args, model.gpq_config.image_shape)
    model.check_inputs(split.x_db)
    return model, split, chief


def encode_images(model, images, label):
    """Raw features of uint8 images or `ImageFiles` (read batch by batch), with a line and Keras'
    progress bar on a terminal (a script's stderr keeps errors alone)."""
    terminal = sys.stderr.isatty()
    if terminal:
        print(f"encoding {len(images)} {label} images", file=sys.stderr)
    return model.encode(images, verbose=1 if terminal else 0)


def not_chief(path):
    from gpq_keras.files import display_path

    print(f"a non-chief worker: the chief writes {display_path(path)}")


def wrote(path, what=""):
    """Print "wrote PATH[: what]", the path escaped for one line of text."""
    from gpq_keras.files import display_path

    print(f"wrote {display_path(path)}" + (f": {what}" if what else ""))


def write_npz_atomic(path, **arrays):
    import numpy as np

    from gpq_keras.files import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


# --- the path guard -------------------------------------------------------------------------------

# Where each command reads and writes: (flag, attribute) of its input files and of its output files.
_INPUTS = (
    ("--model", "model"),
    ("--index", "index"),
    ("--checkpoint", "checkpoint"),
    ("--imagenet-mat", "imagenet_mat"),
    ("--init-model", "init_model"),
    ("--config", "config"),
)
_OUTPUTS = (("--output", "output"), ("--json", "json"), ("--figure", "figure"))
# the data specs whose folders hold image files: (kind, position of the folder in `spec_paths`)
_IMAGE_FOLDERS = {"folder": 0, "nuswide": 1, "list": -1}


def _outputs(args):
    """[(flag, path, kind)] of the command: kind "file", "dir" or None (not checked for shape)."""
    if getattr(args, "output_paths", None):
        return [(*out, None) if len(out) == 2 else tuple(out) for out in args.output_paths(args)]
    kind = getattr(args, "output_kind", "file")  # export's --output is a folder
    return [
        (flag, getattr(args, attr), kind if flag == "--output" else "file")
        for flag, attr in _OUTPUTS
        if getattr(args, attr, None)
    ]


def _inputs(args):
    """([(flag, path)] of the files and folders the command reads, [(flag, folder)] of the folders
    of image files it reads, [(flag, path)] of the image files `--images` lists)."""
    from gpq_keras.data import spec_kind, spec_paths

    inputs = [(flag, getattr(args, attr)) for flag, attr in _INPUTS if getattr(args, attr, None)]
    image_folders = []
    if getattr(args, "data", None):
        paths = spec_paths(args.data)
        inputs += [("--data", path) for path in paths]
        position = _IMAGE_FOLDERS.get(spec_kind(args.data))
        if position is not None and paths:
            image_folders.append(("--data", paths[position]))
    unlabeled = getattr(args, "unlabeled", None)
    if unlabeled:
        inputs.append(("--unlabeled", unlabeled))
        if os.path.isdir(unlabeled):
            image_folders.append(("--unlabeled", unlabeled))
    inputs += [("--image", path) for path in getattr(args, "image", None) or []]
    inputs += _backbone_inputs(args)
    if getattr(args, "checkpoint", None):  # a TF1 checkpoint is a prefix of several files
        inputs += [("--checkpoint", args.checkpoint + suffix) for suffix in (".index", ".meta")]
    listed = []
    if image_specs(args):
        for spec in image_specs(args):
            inputs.append(("--images", spec))
            if os.path.isdir(spec):
                image_folders.append(("--images", spec))
        listed = [("--images", path) for path in image_listing(args).paths]
    return inputs, image_folders, listed


def _backbone_inputs(args):
    """[(flag, path)] of the backbone files a command reads: a `--backbone-weights` file, and the
    files of a `--backbone kerashub:FOLDER` preset."""
    inputs = []
    weights = getattr(args, "backbone_weights", None)
    if weights and weights.lower() not in ("imagenet", "none"):
        inputs.append(("--backbone-weights", weights))
    backbone = getattr(args, "backbone", None) or ""
    folder = os.path.expanduser(backbone[len(HUB_PREFIX) :])
    if backbone.startswith(HUB_PREFIX) and os.path.isdir(folder):
        inputs += [
            ("--backbone", os.path.join(folder, name)) for name in sorted(os.listdir(folder))
        ]
    return inputs


def _real(path):
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _identity(path):
    """(device, inode) of the file `path` names (through links), or None."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def check_paths(args):
    """Refuse, before any work and in one line, an output that

    - is (through links) one of the inputs, one of the image files `--images` lists, or another
      output;
    - is an image file (by its extension) inside a folder of input images (`--images DIR`,
      `--data folder:DIR`, ...), where the next run would read it;
    - is a folder (`kind="dir"`: a run folder, a SavedModel) that holds an input;
    - cannot be written: its folder missing or a file, a folder where a file is wanted, a file
      where a folder is wanted (`gpq_keras.files.check_output_path`).

    A command whose outputs are more than its flags name (a training run folder) gives them as
    `output_paths(args)` -> [(flag, path) or (flag, path, kind)] in its parser's defaults; kind
    "file" or "dir" is checked for shape, a pair is not.
    """
    from gpq_keras.data.user import IMAGE_EXTENSIONS
    from gpq_keras.files import check_output_path, display_path

    outputs = _outputs(args)
    if not outputs:
        return
    inputs, image_folders, listed = _inputs(args)

    def refuse(flag, path, why):
        raise CLIError(f"{flag} {display_path(path)} {why}")

    listed_by_identity = {}  # (device, inode) -> (flag, path) of the files --images lists: once
    for in_flag, in_path in listed:
        listed_by_identity.setdefault(_identity(in_path), (in_flag, in_path))
    listed_by_identity.pop(None, None)
    seen = {}
    for flag, path, kind in outputs:
        out = _real(path)
        for in_flag, in_path in inputs:
            if out == _real(in_path):
                refuse(
                    flag,
                    path,
                    f"is the input {in_flag} {display_path(in_path)}; refusing to overwrite an "
                    "input",
                )
            if kind == "dir" and _real(in_path).startswith(out.rstrip(os.sep) + os.sep):
                refuse(
                    flag,
                    path,
                    f"holds the input {in_flag} {display_path(in_path)}; refusing to write over "
                    "an input",
                )
        same_file = listed_by_identity.get(_identity(path))
        if same_file is not None:
            in_flag, in_path = same_file
            refuse(
                flag,
                path,
                f"is the input {in_flag} file {display_path(in_path)}; refusing to overwrite an "
                "input",
            )
        if kind != "dir" and out.lower().endswith(IMAGE_EXTENSIONS):
            for in_flag, folder in image_folders:
                if out.startswith(_real(folder).rstrip(os.sep) + os.sep):
                    refuse(
                        flag,
                        path,
                        f"is an image file in the input {in_flag} {display_path(folder)}; "
                        "refusing to write among the input images",
                    )
        if out in seen and seen[out] != flag:
            raise CLIError(f"{flag} and {seen[out]} are the same file ({display_path(path)})")
        seen.setdefault(out, flag)
    for flag, path, kind in outputs:
        if kind is not None:
            check_output_path(path, flag, kind, make_parents=getattr(args, "make_parents", False))
