"""What the command modules share: errors, parser pieces, model and data loading, the path guard.

Importing it loads the standard library only; everything heavy is imported inside the functions.
"""

import argparse
import os
import sys

from gpq_keras.config import STRATEGIES  # the standard library only: cheap to import

IMAGES_HELP = (
    "a folder of images (any depth; classes from its sub-folders when every image is in one) or a "
    "glob such as 'photos/**/*.jpg'"
)
DATA_HELP = (
    "data spec: digits | cifar10:DIR | tfds:cifar10[:DATA_DIR] | nuswide:LIST_DIR:IMAGE_ROOT | "
    "npz:FILE | folder:DIR"
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
    add_strategy_flag(parser, "encode")


def add_strategy_flag(parser, what):
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help=f"{what} with tf.distribute: one device, mirrored (this machine's GPUs), multi-worker "
        "(the machines of TF_CONFIG; only the chief writes); auto = mirrored when more than "
        "one GPU is visible (auto)",
    )


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


def load_model(args):
    """(model, whether this process writes the outputs), the model loaded under `--strategy`."""
    from gpq_keras.model import load_gpq

    strategy, chief = load_strategy(args)
    with strategy.scope():
        return load_gpq(args.model), chief


def load_model_and_data(args):
    """(model, split, whether this process writes the outputs), the model loaded under
    `--strategy`."""
    from gpq_keras.data import load_data

    model, chief = load_model(args)
    split = load_data(args.data)
    model.check_images(split.x_db)
    return model, split, chief


def encode_images(model, images, label):
    """Raw features of uint8 images, with Keras' progress bar on a terminal."""
    print(f"encoding {len(images)} {label} images", file=sys.stderr)
    return model.encode(images, verbose=1 if sys.stderr.isatty() else 0)


def not_chief(path):
    print(f"a non-chief worker: the chief writes {path}")


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


def check_paths(args):
    """Refuse, before any work, an output that is (through links) one of the inputs or another
    output. A command whose outputs are more than its flags name (a training run folder) gives them
    as `output_paths(args)` -> [(flag, path)] in its parser's defaults."""
    from gpq_keras.data import spec_paths

    def real(path):
        return os.path.realpath(os.path.expanduser(path))

    inputs = [(flag, getattr(args, attr)) for flag, attr in _INPUTS if getattr(args, attr, None)]
    if getattr(args, "data", None):
        inputs += [("--data", path) for path in spec_paths(args.data)]
    inputs += [("--image", path) for path in getattr(args, "image", None) or []]
    if getattr(args, "checkpoint", None):  # a TF1 checkpoint is a prefix of several files
        inputs += [("--checkpoint", args.checkpoint + suffix) for suffix in (".index", ".meta")]
    if getattr(args, "output_paths", None):
        outputs = args.output_paths(args)
    else:
        outputs = [
            (flag, getattr(args, attr)) for flag, attr in _OUTPUTS if getattr(args, attr, None)
        ]
    seen = {}
    for flag, path in outputs:
        for in_flag, in_path in inputs:
            if real(path) == real(in_path):
                raise CLIError(
                    f"{flag} {path} is the input {in_flag} {in_path}; refusing to overwrite an "
                    "input"
                )
        if real(path) in seen and seen[real(path)] != flag:
            raise CLIError(f"{flag} and {seen[real(path)]} are the same file ({path})")
        seen.setdefault(real(path), flag)
