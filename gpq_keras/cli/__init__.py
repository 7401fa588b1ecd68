"""The `gpq` command line: wires data -> model -> codes -> index -> metrics; holds no algorithm.

Each command module holds its commands' parsers and handlers: `train`, `data` (data check), `embed`,
`evaluate` (evaluate, encode), `index` (index build/add/search, search) and `convert` (convert,
export). Parsing imports nothing heavy: `gpq --help` and argument errors answer without loading
TensorFlow, and TensorFlow's own start-up logging is silenced (`TF_CPP_MIN_LOG_LEVEL`) before it
is first imported.
"""

import argparse
import sys
import textwrap

from gpq_keras.cli import convert, data, doctor, embed, evaluate, index, serve, train
from gpq_keras.cli.common import CLIError, Interrupted, Parser, check_paths, quiet_tensorflow

__all__ = ["CLIError", "Interrupted", "build_parser", "main"]

# The sub-commands in the order `gpq --help` lists them.
_COMMANDS = (
    train.add_train,
    data.add_data,
    embed.add_embed,
    evaluate.add_evaluate,
    evaluate.add_encode,
    convert.add_convert,
    index.add_index,
    index.add_search,
    convert.add_export,
    serve.add_serve,
    doctor.add_doctor,
)


def build_parser():
    parser = Parser(
        prog="gpq",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="GPQ (Generalized Product Quantization network): train, convert, encode, "
        "index, evaluate.",
        epilog=textwrap.dedent("""\
            example:
              gpq train --data digits --output runs/demo --epochs 40
              gpq evaluate --model runs/demo/model.keras --data digits"""),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Run `gpq` with `argv` (default: the process's arguments) -> the exit status: 0, 2 for a
    user error (one line on stderr), 130 for Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    quiet_tensorflow()
    try:
        check_paths(args)
        args.func(args)
    except (KeyboardInterrupt, Interrupted) as exc:
        message = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"gpq {args.command}: {message}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, KeyError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"gpq {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
