"""`gpq train`: its flags, and the wiring of data, config, model and `fit_run` into a run folder."""

import argparse
import math
import os
import sys

from gpq_keras.cli.common import (
    APPLICATIONS,
    DATA_HELP,
    CLIError,
    Interrupted,
    add_backbone_flags,
    add_command,
    add_protocol_flags,
    add_reader_flags,
    add_strategy_flag,
    add_unlabeled_flag,
    backbone_weights,
    load_strategy,
    non_negative_int,
    positive_int,
)
from gpq_keras.config import RETRIEVAL_MODES

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def finite_positive(text):
    """An argparse type: a finite number > 0 (a learning rate of 0 trains nothing, inf or NaN
    gives NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def filter_widths(text):
    """An argparse type: the four VGG stage widths, "16,32,64,64" -> (16, 32, 64, 64)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 4 comma-separated positive integers such as 16,32,64,64, got {text!r}"
        )
    return values


def add_train(sub):
    p = add_command(
        sub,
        "train",
        "train GPQ with model.fit on a data set's labeled and unlabeled images; rerun the "
        "same command to resume an interrupted run",
        "gpq train --data cifar10:cifar10 --output runs/cifar48 --bits 48 --epochs 300 "
        "--imagenet-mat checkpoints/original/ImageNet_pretrained.mat",
        run_train,
    )
    # the run folder's parents are created (`mkdir -p`), as `--output runs/demo` in a fresh clone
    p.set_defaults(output_paths=_run_files, make_parents=True)
    add_training_data_flags(p)
    p.add_argument(
        "--output",
        required=True,
        help="run folder: model.keras, best.keras, log.csv, logs/ (TensorBoard), run.json, "
        "checkpoints/",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=300,
        help="epochs of len(labeled) // batch-size steps (300)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        help="images per stream and step: the global batch, split over the replicas (500)",
    )
    _add_model_flags(p)
    _add_backbone_flags(p.add_argument_group("backbone (F)"))
    _add_long_run_flags(p.add_argument_group("long runs"))
    _add_scale_flags(
        p.add_argument_group("training at scale (--batch-size is the global batch of all replicas)")
    )


def add_training_data_flags(p):
    """--data, --unlabeled, --protocol, --labeled-per-class, --image-size and the reader flags:
    the data of a run (`gpq train`, `gpq data check`); `training_split` reads them."""
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_unlabeled_flag(p)
    add_protocol_flags(p, seed=False)  # --seed (below) seeds the protocol too
    p.add_argument(
        "--labeled-per-class",
        type=positive_int,
        metavar="N",
        help="simulate label scarcity: N labeled images per class, the others unlabeled (the "
        "gpq protocol with N; default: every labeled image trains)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help="the model's input side: image files are read and resized to N x N as batches are "
        "drawn (default 32, the paper's; array data keep their own size)",
    )
    add_reader_flags(p)


def non_negative_float(text):
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _add_backbone_flags(p):
    add_backbone_flags(
        p,
        "F: vgg (the paper's, default for images), mlp (default for embeddings), identity "
        f"(embeddings of width M*d), {', '.join(APPLICATIONS)} (keras.applications) or "
        "kerashub:PRESET_OR_PATH (a KerasHub preset or its saved folder; needs gpq-keras[hub])",
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train only the head (the dense layer to M*d), Z and C; the backbone's batch norm "
        "runs in inference mode",
    )
    p.add_argument(
        "--backbone-learning-rate-multiplier",
        type=non_negative_float,
        default=1.0,
        metavar="R",
        help="fine-tune the backbone at R times the head's learning rate (1)",
    )
    p.add_argument(
        "--mlp-width",
        type=positive_int,
        metavar="W",
        help="--backbone mlp: the width of its hidden layer (512)",
    )


def _add_model_flags(p):
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--bits", type=int, choices=(12, 24, 32, 48), help="code length with K=16 (default 48)"
    )
    size.add_argument(
        "--n-book",
        type=positive_int,
        dest="num_subspaces",
        help="M, number of codebooks (sets GPQConfig.num_subspaces; instead of --bits)",
    )
    p.add_argument(
        "--n-word",
        type=positive_int,
        dest="num_codewords",
        help="K, codewords per codebook, a power of two (sets GPQConfig.num_codewords)",
    )
    p.add_argument(
        "--filters",
        type=filter_widths,
        help="widths of the four VGG stages, e.g. 16,32,64,64 (64,128,256,512)",
    )
    p.add_argument(
        "--learning-rate",
        type=finite_positive,
        help="initial Adam learning rate, a finite number > 0 (2e-4)",
    )
    p.add_argument(
        "--retrieval-mode",
        choices=RETRIEVAL_MODES,
        help="default retrieval mode stored in the model",
    )
    p.add_argument(
        "--imagenet-mat", help="initialise the backbone from the original ImageNet_pretrained.mat"
    )
    p.add_argument(
        "--init-model",
        help="start from the weights of this GPQ .keras file, of the same configuration "
        "(fine-tuning; the same start on every Keras backend)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="weights, data order, augmentation and the protocol's draws (0)",
    )
    p.add_argument(
        "--pipeline",
        choices=("auto", "tf.data", "numpy"),
        default="auto",
        help="training input: tf.data, or NumPy (a keras.utils.PyDataset, the same augmentation "
        "drawn from NumPy's generator); auto = tf.data when TensorFlow is installed (auto)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow's op determinism: the same seed gives the same model on the same machine "
        "(some GPU ops get slower; JAX on CPU is deterministic without it)",
    )


def _add_long_run_flags(run):
    start = run.add_mutually_exclusive_group()
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --output (kept until the new run has saved its first "
        "backup)",
    )
    start.add_argument(
        "--restart",
        action="store_true",
        help="throw away an interrupted run's backup (or a damaged run.json) and start over",
    )
    run.add_argument(
        "--backup-every-steps",
        type=positive_int,
        help="back the training state up every N steps too (default: every epoch only)",
    )
    run.add_argument(
        "--save-every",
        type=non_negative_int,
        default=0,
        help="also save checkpoints/epoch_NNN.keras every N epochs (0: never)",
    )
    run.add_argument(
        "--keep-checkpoints", type=positive_int, default=3, help="periodic checkpoints kept (3)"
    )
    run.add_argument(
        "--val-per-class",
        type=non_negative_int,
        help="labeled images per class held out for validation (default: a tenth of the smallest "
        "class; 0: none)",
    )
    run.add_argument(
        "--eval-every",
        type=positive_int,
        default=5,
        help="validation mAP every N epochs and after the last (5)",
    )
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="Keras dtype policy of the backbone; the GPQ heads stay float32 (float32)",
    )
    run.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA: auto = on where a GPU is visible (it is slower on CPU) (auto)",
    )


def _add_scale_flags(scale):
    add_strategy_flag(scale, "train")
    scale.add_argument(
        "--sync-batch-norm",
        action=argparse.BooleanOptionalAction,
        help="batch norm over the global batch (default: on with more than one replica)",
    )
    scale.add_argument(
        "--scratch",
        help="multi-worker: where a non-chief worker writes (default: a folder of "
        "the system's temporary directory)",
    )


def _run_files(args):
    """The run folder `--output` (a folder, which holds no input) and its files, for the path
    guard (`common.check_paths`)."""
    from gpq_keras.training import RunDirectory

    run = RunDirectory(args.output)
    files = (
        run.model,
        run.best,
        run.log,
        run.record,
        run.split,
        run.logs,
        run.checkpoints,
        run.backup,
    )
    return [("--output", run.path, "dir")] + [("--output", path) for path in files]


# --- the command ----------------------------------------------------------------------------------


def run_train(args):
    from gpq_keras.distribute import scratch_folder
    from gpq_keras.training import RunDirectory

    if args.bits is not None and args.num_codewords is not None:
        raise CLIError("give either --bits or --n-book/--n-word, not both")
    strategy, chief = load_strategy(args)
    # Only the chief writes --output; another worker of a multi-worker run writes the same files to
    # a scratch folder of its own, cleared at each start (it resumes from the chief's state).
    run = RunDirectory(
        args.output if chief else args.scratch or scratch_folder(args.output, strategy)
    )
    with run.lock():
        if not chief:
            run.clear()
            print(
                f"a non-chief worker: the chief writes {args.output}; this worker writes {run.path}"
            )
        _train(args, run, strategy)


def _train(args, run, strategy):
    """Every input is read and checked (data, config, model, --init-model, --imagenet-mat) before
    anything in the run folder changes; only then does --overwrite / --restart move the previous
    run aside, and it is put back if the new run stops before its first backup."""
    from gpq_keras.distribute import num_workers
    from gpq_keras.files import display_path
    from gpq_keras.training import new_record

    output = display_path(args.output)
    state = _run_state(args, run)
    if state == "finished" and not args.overwrite:
        raise CLIError(
            f"{output} holds a finished run ({display_path(run.model)}); pass --overwrite to "
            "train a new one there"
        )
    start_over = state != "new" and (args.overwrite or args.restart)
    if not start_over:
        run.check_folders()
    from gpq_keras.distribute import check_global_batch

    split, validation, per_class = training_split(args)
    check_global_batch(min(args.batch_size, len(split.x_labeled), len(split.x_unlabeled)), strategy)
    replicas = strategy.num_replicas_in_sync
    args.backbone = _backbone_name(args, split)
    config = _config_from_args(args, split, replicas)
    settings = _settings(args, config, per_class)
    stored_split = _split_file(split, validation)
    resuming_run = state == "interrupted" and not start_over
    record = _resume_check(run, settings, stored_split) if resuming_run else {}
    model, resuming = _build_model(args, config, strategy, run, resume=not start_over)
    record = record or new_record(["gpq"] + args.argv, settings)
    record.update(
        jit_compile=bool(model.jit_compile), strategy=type(strategy).__name__, replicas=replicas
    )
    if num_workers(strategy) > 1:
        resolver = strategy.cluster_resolver
        record["task"] = f"{resolver.task_type} {resolver.task_id}"
    n_val = 0 if validation is None else len(validation[0])
    parts = split.part_sizes(n_val)
    record["split"] = {"protocol": split.protocol, "seed": split.seed, "parts": parts}
    height, width = config.image_shape[:2]
    inputs = f"{config.input_dim}-d embeddings" if config.takes_vectors else f"{height}x{width}"
    print(
        f"GPQ {config.bits} bits (M={config.num_subspaces}, K={config.num_codewords}, "
        f"d={config.subspace_dim}) on {split.name} ({split.protocol} protocol, "
        f"{inputs}{', streamed from files' if split.streamed else ''}; backbone "
        f"{args.backbone}{', frozen' if args.freeze_backbone else ''}): "
        f"{parts['labeled']} labeled, {parts['unlabeled']} unlabeled, {n_val} validation, "
        f"{parts['query']} query, {parts['database']} database "
        f"{'vectors' if config.takes_vectors else 'images'}; "
        f"{args.precision}, XLA {'on' if model.jit_compile else 'off'}"
        + (f"; {replicas} replicas, {_batch_norm_line(config)}" if replicas > 1 else "")
        + ("; resuming from the backup in " + display_path(run.backup) if resuming else "")
    )
    previous = None
    try:
        previous = run.set_aside() if start_over else None
        if previous is not None:
            print(
                f"set the previous run in {output} aside: it is removed once this run has saved "
                "its first backup, and put back if this run stops before"
            )
        stale = run.prepare()
        if stale:
            print(f"removed {len(stale)} temporary file(s) an interrupted write left in {output}")
        if not (resuming_run and os.path.exists(run.split)):
            from gpq_keras.cli.common import write_npz_atomic

            write_npz_atomic(run.split, **stored_split)  # the run keeps its split
        record = _fit(args, model, split, run, validation, record, previous)
    except BaseException:
        if previous is not None and os.path.isdir(previous):
            run.restore_previous(previous)
            print(
                f"put the previous run in {output} back: this one stopped before its first backup"
            )
        raise
    if previous is not None:
        print(f"removed the previous run in {output}")
    best = (record.get("validation") or {}).get("best")
    if best:
        shown = display_path(run.best)
        print(f"best val_mAP {best['val_mAP']:.4f} at epoch {best['epoch']}: {shown}")
    print(f"saved {display_path(run.model)}")


def _run_state(args, run):
    """`run.state()`; "damaged" for a run.json that cannot be read, when --overwrite or --restart
    starts over (refused, naming the file, without them)."""
    try:
        return run.state()
    except ValueError as exc:
        if not (args.overwrite or args.restart):
            raise CLIError(f"{exc}; pass --restart to start over") from None
        print(f"{exc}: starting over")
        return "damaged"


def training_split(args, drop_undecodable=True):
    """(split without its validation images, (x_val, y_val) or None, validation images per class)
    of `gpq train`'s (and `gpq data check`'s) data flags.

    `drop_undecodable`: as `common.load_data` (False for `gpq data check`, which decodes every
    file itself).

    A pool's given protocol (folder:, an npz: without x_query) holds `--val-per-class` images per
    class out as its queries: they are the validation images too. Other splits hold validation
    images out of their labeled set.
    """
    import numpy as np

    from gpq_keras.cli.common import load_data
    from gpq_keras.data.split import default_validation_per_class, hold_out_validation

    options = {}
    if args.labeled_per_class is not None:
        options["labeled_per_class"] = args.labeled_per_class
    from gpq_keras.data import is_pool_spec

    queries_validate = is_pool_spec(args.data) and (args.protocol or "given") == "given"
    queries_validate = queries_validate and args.labeled_per_class is None
    if queries_validate and args.val_per_class is not None:
        options["query_per_class"] = args.val_per_class
    image_shape = None
    if args.image_size is not None:
        image_shape = (args.image_size, args.image_size, 3)
    # skipped files listed on stderr; with --skip-unreadable those that do not decode left out
    split = load_data(args, image_shape, drop_undecodable=drop_undecodable, **options)
    if not split.has_training_data:
        raise CLIError(f"data {args.data!r} has no labeled/unlabeled training images")
    if split.takes_vectors and args.image_size is not None:
        raise CLIError(f"--image-size: --data {args.data!r} holds embeddings, not images")
    if args.image_size is not None and tuple(split.x_db.shape[1:3]) != image_shape[:2]:
        height, width = split.x_db.shape[1:3]
        raise CLIError(
            f"--image-size {args.image_size}: the images of {args.data!r} are arrays of "
            f"{height}x{width}, which are not resized; write them as image files (folder:, list:) "
            "to train at another size"
        )
    if queries_validate:
        # the queries per class asked for (a small class gives fewer: protocols.given_split)
        per_class = 0 if split.x_query is None else int(np.bincount(split.y_query).max())
        validation = None if split.x_query is None else (split.x_query, split.y_query)
        if split.x_query is not None and "query" in split.index:
            split.index.setdefault("validation", split.index["query"])
    else:
        per_class = (
            default_validation_per_class(split)
            if args.val_per_class is None
            else args.val_per_class
        )
        split, x_val, y_val = hold_out_validation(split, per_class)
        validation = None if x_val is None else (x_val, y_val)
    return split, validation, per_class


def _backbone_name(args, split):
    """--backbone, checked against the data and the other model flags: vgg for images and mlp for
    embeddings by default."""
    name = args.backbone or ("mlp" if split.takes_vectors else "vgg")
    vectors = name in ("mlp", "identity")
    if vectors != split.takes_vectors:
        what = "embeddings (N, D)" if split.takes_vectors else "images"
        wanted = "mlp or identity" if split.takes_vectors else "vgg, an application or kerashub:"
        raise CLIError(f"--backbone {name}: --data {args.data!r} holds {what}; use {wanted}")
    for flag, given, only in (
        ("--filters", args.filters, "vgg"),
        ("--imagenet-mat", args.imagenet_mat, "vgg"),
        ("--mlp-width", args.mlp_width, "mlp"),
    ):
        if given is not None and name != only:
            raise CLIError(f"{flag} sets the {only} backbone; --backbone is {name}")
    return name


def _split_file(split, validation):
    """The arrays of the run's `split.npz` (`gpq_keras.data.split.split_arrays`)."""
    from gpq_keras.data.split import split_arrays

    return split_arrays(split, None if validation is None else validation[0])


def _config_from_args(args, split, replicas=1):
    from gpq_keras.config import GPQConfig

    sync = _sync_batch_norm(args, replicas)
    base = {"num_classes": split.num_classes, "sync_batch_norm": sync}
    if split.takes_vectors:
        base["input_dim"] = int(split.x_db.shape[1])
    else:
        base["image_shape"] = tuple(split.x_db.shape[1:])
    if args.filters:
        base["filters"] = args.filters
    if args.learning_rate is not None:
        base["learning_rate"] = args.learning_rate
    if args.retrieval_mode:
        base["retrieval_mode"] = args.retrieval_mode
    if args.num_subspaces is not None or args.num_codewords is not None:
        return GPQConfig(
            num_subspaces=args.num_subspaces or 12, num_codewords=args.num_codewords or 16, **base
        )
    return GPQConfig.from_bits(args.bits or 48, **base)


def _sync_batch_norm(args, replicas):
    """GPQConfig.sync_batch_norm of --sync-batch-norm: on TensorFlow on by default with more than
    one replica. On JAX off, and the flag refused: batch norm sees the global batch as it is (the
    step is one program over it), and per-replica statistics do not exist."""
    import keras

    if keras.config.backend() == "tensorflow":
        return replicas > 1 if args.sync_batch_norm is None else args.sync_batch_norm
    if args.sync_batch_norm is not None:
        flag = "--sync-batch-norm" if args.sync_batch_norm else "--no-sync-batch-norm"
        raise CLIError(
            f"{flag} is tf.distribute's (KERAS_BACKEND=tensorflow); on {keras.config.backend()} "
            "batch norm sees the whole batch on any number of devices"
        )
    return False


def _batch_norm_line(config):
    """How batch norm treats the global batch of several replicas, for the run's first line."""
    import keras

    if config.sync_batch_norm or keras.config.backend() != "tensorflow":
        return "batch norm over the global batch"
    return "batch norm per replica (--no-sync-batch-norm)"


def _settings(args, config, per_class):
    """What a resumed run must share with the interrupted one (`_resume_check`)."""
    settings = {
        "data": args.data,
        "config": config.to_dict(),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "val_per_class": per_class,
        "precision": args.precision,
    }
    if args.init_model:
        settings["init_model"] = os.path.abspath(args.init_model)
    if args.pipeline != "auto":
        settings["pipeline"] = args.pipeline
    for key in ("protocol", "labeled_per_class"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.unlabeled:
        settings["unlabeled"] = os.path.abspath(args.unlabeled)
    backbone = {
        "backbone": args.backbone,
        "backbone_weights": backbone_weights(args),
        "freeze_backbone": args.freeze_backbone,
        "backbone_learning_rate_multiplier": args.backbone_learning_rate_multiplier,
        "mlp_width": args.mlp_width,
    }
    defaults = {
        "backbone": "vgg",
        "backbone_weights": None,
        "freeze_backbone": False,
        "backbone_learning_rate_multiplier": 1.0,
        "mlp_width": None,
    }  # a run.json of an image run with the paper's backbone stays as earlier versions wrote it
    settings.update({k: v for k, v in backbone.items() if v != defaults[k]})
    if settings.get("backbone_weights") not in (None, "imagenet"):
        settings["backbone_weights"] = os.path.abspath(args.backbone_weights)
    return settings


def _resume_check(run, settings, stored_split):
    """Refuse to resume an interrupted run with other settings, or other data (its `split.npz`),
    than it was started with -> its record."""
    from gpq_keras.data.split import compare_split_arrays
    from gpq_keras.files import display_path, read_npz

    if os.path.exists(run.split):
        changed = compare_split_arrays(
            read_npz(run.split, "split file"), stored_split, display_path(run.split)
        )
        if changed:
            raise CLIError(f"{changed}; rerun with the same data to resume, or --restart")
    record = run.read_record() or {}
    started = record.get("settings")
    if started is not None and started != settings:
        changed = sorted(
            k for k in set(started) | set(settings) if started.get(k) != settings.get(k)
        )
        raise CLIError(
            f"{display_path(run.path)} holds an interrupted run with other settings "
            f"({', '.join(changed)}); rerun it with its own arguments to resume, or pass "
            "--restart to start over"
        )
    return record


def _build_model(args, config, strategy, run, resume=True):
    """(the compiled model, whether a backup will be resumed), seeded, initialised from
    --init-model or --imagenet-mat unless resuming (`resume` False: the backup is about to be set
    aside)."""
    import keras

    from gpq_keras.model import GPQ
    from gpq_keras.training import TrainingBackup

    keras.utils.set_random_seed(args.seed)
    if args.deterministic and keras.config.backend() == "tensorflow":
        import tensorflow as tf  # XLA on CPU is deterministic as it is

        tf.config.experimental.enable_op_determinism()
    with strategy.scope():
        backbone = _backbone(args, config)
        model = GPQ(
            config,
            backbone=backbone,
            dtype=args.precision,
            freeze_backbone=args.freeze_backbone,
            backbone_learning_rate_multiplier=args.backbone_learning_rate_multiplier,
        )
        resuming = resume and TrainingBackup.has_backup(run.backup)
        if args.init_model and not resuming:
            _init_from_model(model, args.init_model)
            print(f"weights initialised from {args.init_model}")
        if args.imagenet_mat and not resuming:
            from gpq_keras.convert import load_imagenet_mat

            load_imagenet_mat(model, args.imagenet_mat)
            print(f"backbone initialised from {args.imagenet_mat}")
        model.compile(jit_compile=_jit_compile(args.jit_compile))
    return model, resuming


def _backbone(args, config):
    """F of --backbone, --backbone-weights and --mlp-width, in the policy of --precision; a CLIError
    (one line) for a name, size or weights file that does not fit."""
    from gpq_keras.backbones import BackboneError, build_backbone

    try:
        return build_backbone(
            args.backbone,
            config,
            weights=backbone_weights(args),
            mlp_width=args.mlp_width or 512,
            dtype=args.precision,
        )
    except (BackboneError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None


def _init_from_model(model, path):
    """Give `model` the weights of the GPQ saved at `path`, which must have the same
    configuration."""
    from gpq_keras.cli.common import check_finite_model
    from gpq_keras.model import load_gpq

    source = load_gpq(path)
    check_finite_model(source, "--init-model", path)
    if source.gpq_config != model.gpq_config:
        mine, theirs = model.gpq_config.to_dict(), source.gpq_config.to_dict()
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CLIError(
            f"--init-model {path} has another configuration than this run ({', '.join(changed)})"
        )
    model.set_weights(source.get_weights())


def _jit_compile(choice):
    """--jit-compile: on, off, or auto (TensorFlow: XLA where a GPU is visible, on CPU it is slower,
    see README; JAX: always, as Keras compiles JAX steps; torch: off, `torch.compile` costs minutes
    on the first step and again for an epoch's smaller last batch, docs/backends.md)."""
    if choice == "auto":
        import keras

        if keras.config.backend() != "tensorflow":
            return keras.config.backend() == "jax"
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return choice == "on"


def _fit(args, model, split, run, validation, record, previous):
    """`fit_run` outside the strategy's scope (it restores the backup on the chief alone); Ctrl-C
    records the run as interrupted, a diverging loss stops it with one line."""
    from gpq_keras.files import display_path
    from gpq_keras.training import Diverged, fit_run

    try:
        return fit_run(
            model,
            split,
            run,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            validation=validation,
            eval_every=args.eval_every,
            backup_every_steps=args.backup_every_steps,
            save_every=args.save_every,
            keep_checkpoints=args.keep_checkpoints,
            record=record,
            pipeline=args.pipeline,
            verbose=1 if sys.stdout.isatty() else 2,
            previous=previous,
        )
    except Diverged as exc:
        raise CLIError(f"{exc}; lower --learning-rate") from None
    except KeyboardInterrupt:
        if previous is not None and os.path.isdir(previous):  # put back by `_train`
            raise Interrupted(
                f"interrupted before the first backup; the previous run in "
                f"{display_path(run.path)} stays as it was"
            ) from None
        record = run.read_record() or record
        record["status"] = "interrupted"
        run.write_record(record)
        raise Interrupted(
            "interrupted; rerun the same command to resume from the last backup in "
            f"{display_path(run.backup)}"
        ) from None
