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
        "write a TensorFlow SavedModel to serve: uint8 images in, features and codes out",
        "gpq export --model runs/photos/model.keras --output served/gpq/1",
        run_export,
    )
    # --output is a folder; its missing parents are created (served/gpq/1, TF Serving's layout)
    p.set_defaults(output_kind="dir", make_parents=True)
    p.add_argument("--model", required=True, help="a GPQ .keras file")
    p.add_argument(
        "--output",
        required=True,
        help="the SavedModel folder to create (must not exist; missing parent folders are made)",
    )
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook of the codes (model's default)"
    )
    add_strategy_flag(p, "load")


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
    from gpq_keras.export import export_saved_model
    from gpq_keras.files import display_path

    if os.path.lexists(args.output):  # before the model loads
        raise CLIError(
            f"--output {display_path(args.output)} already exists; a SavedModel is written to a "
            "new folder (remove it or choose another path)"
        )
    model, chief = load_model(args)
    if not chief:
        return not_chief(args.output)
    export_saved_model(model, args.output, mode=args.mode)
    cfg = model.gpq_config
    inputs = (
        f"embeddings float32 [N, {cfg.input_dim}]"
        if cfg.takes_vectors
        else f"images uint8 [N, {', '.join(map(str, cfg.image_shape))}]"
    )
    wrote(args.output, f"a SavedModel, serving_default({inputs}) -> features, codes")
