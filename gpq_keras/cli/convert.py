"""`gpq convert` (the original TF1 checkpoint into a Keras model) and `gpq export` (SavedModel)."""

import json

from gpq_keras.cli.common import CLIError, add_command, add_strategy_flag, load_model, not_chief
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
    p.add_argument("--output", required=True, help="the .keras file to write")
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
    p.add_argument("--model", required=True, help="a GPQ .keras file")
    p.add_argument(
        "--output", required=True, help="the SavedModel folder to create (must not exist)"
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
        with open(args.config) as fh:
            try:
                config = json.load(fh)
            except json.JSONDecodeError as exc:
                raise CLIError(f"{args.config}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise CLIError(f"{args.config}: expected a JSON object of GPQConfig fields")
    model, report = convert_tf1_checkpoint(args.checkpoint, config=config, return_report=True)
    print(report.table())
    save_atomic(model, args.output)
    print(f"wrote {args.output}")


def run_export(args):
    from gpq_keras.export import export_saved_model

    model, chief = load_model(args)
    if not chief:
        return not_chief(args.output)
    export_saved_model(model, args.output, mode=args.mode)
    print(
        f"wrote {args.output}: a SavedModel, serving_default(images uint8 [N, "
        f"{', '.join(map(str, model.gpq_config.image_shape))}]) -> features, codes"
    )
