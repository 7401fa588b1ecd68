"""`gpq convert` (the original TF1 checkpoint into a Keras model) and `gpq export` (SavedModel)."""

import json
import os

from gpq_keras.cli.common import (
    CLIError,
    add_command,
    add_strategy_flag,
    load_model,
    not_chief,
    wrote,
)
from gpq_keras.config import RETRIEVAL_MODES


def add_convert(sub):
    p = add_command(
        sub,
        "convert",
        "convert the original TF1 checkpoint into a Keras model",
        "gpq convert --checkpoint checkpoints/original/48bits_example.ckpt "
        "--output checkpoints/converted/gpq_cifar10_48bit.keras",
        run_convert,
    )
    p.add_argument("--checkpoint", required=True, help="TF1 checkpoint prefix (without .index)")
    p.add_argument(
        "--output", required=True, help="the .keras file to write (missing folders are created)"
    )
    p.set_defaults(make_parents=True)  # checkpoints/converted/, as the example writes
    p.add_argument(
        "--config",
        help='JSON object of GPQConfig fields to set, e.g. {"image_shape": [32, 32, 3]}; '
        "the rest is inferred from the checkpoint",
    )


def add_export(sub):
    p = add_command(
        sub,
        "export",
        "export the model to serve or ship: a TensorFlow SavedModel, an ONNX or a TFLite file "
        "(uint8 images in, features and codes out), with OUT.codebook.json beside it",
        "gpq export --model runs/photos/model.keras --output served/gpq/1\n"
        "  gpq export --model runs/photos/model.keras --format onnx --output gpq.onnx",
        run_export,
    )
    # a SavedModel folder or a file, and the codebook JSON beside it; missing parents are made
    # (served/gpq/1, TF Serving's layout)
    p.set_defaults(output_paths=_export_outputs, make_parents=True)
    p.add_argument("--model", required=True, help="a GPQ .keras file")
    p.add_argument(
        "--output",
        required=True,
        help="the SavedModel folder, or the .onnx or .tflite file, to create (must not exist; "
        "missing parent folders are made); OUTPUT.codebook.json is written beside it",
    )
    p.add_argument(
        "--format",
        choices=("savedmodel", "onnx", "tflite"),
        default="savedmodel",
        help="savedmodel (a folder, for TF Serving), onnx (onnxruntime) or tflite (LiteRT) "
        "(savedmodel)",
    )
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook of the codes (model's default)"
    )
    add_strategy_flag(p, "load")


def _export_outputs(args):
    """The export's outputs for the path guard: OUT (a folder for a SavedModel) and its JSON."""
    kind = "dir" if args.format == "savedmodel" else "file"
    return [("--output", args.output, kind), ("--output", args.output + ".codebook.json", "file")]


def run_convert(args):
    from gpq_keras.convert import convert_tf1_checkpoint
    from gpq_keras.model import save_atomic

    config = None
    if args.config:  # fields to set; the rest is inferred from the checkpoint
        from gpq_keras.files import display_path, open_regular

        with open_regular(args.config, "--config file") as fh:  # never a FIFO or a device
            text = fh.read(1 << 20)
        try:
            config = json.loads(text)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise CLIError(f"{display_path(args.config)}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise CLIError(
                f"{display_path(args.config)}: expected a JSON object of GPQConfig fields"
            )
    model, report = convert_tf1_checkpoint(args.checkpoint, config=config, return_report=True)
    print(report.table())
    save_atomic(model, args.output)
    wrote(args.output)


def run_export(args):
    from gpq_keras.export import check_backend, codebook_path, export_model, suffix_problem
    from gpq_keras.files import display_path

    check_backend(args.format)
    problem = suffix_problem(args.output, args.format)  # before the model loads
    if problem:
        raise CLIError(f"--output {display_path(args.output)} {problem}")
    for path in (args.output, codebook_path(args.output)):
        if os.path.lexists(path):
            raise CLIError(
                f"--output {display_path(args.output)}: {display_path(path)} already exists; an "
                "export never replaces a file or folder (remove it or choose another path)"
            )
    model, chief = load_model(args)
    if not chief:
        return not_chief(args.output)
    export_model(model, args.output, args.format, mode=args.mode)
    cfg = model.gpq_config
    inputs = (
        f"embeddings float32 [N, {cfg.input_dim}]"
        if cfg.takes_vectors
        else f"images uint8 [N, {', '.join(map(str, cfg.image_shape))}]"
    )
    what = {"savedmodel": "a SavedModel, serving_default", "onnx": "ONNX", "tflite": "TFLite"}
    wrote(args.output, f"{what[args.format]}({inputs}) -> features, codes")
    wrote(codebook_path(args.output), "the distance codebook, for look-up tables and ADC")
