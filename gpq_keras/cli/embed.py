"""`gpq embed`: image files -> the pooled features of a frozen pretrained backbone, as an `.npz`
that `gpq train --data npz:EMB.npz` (a labeled pool) or `--unlabeled EMB.npz` takes."""

import os
import sys

from gpq_keras.cli.common import (
    APPLICATIONS,
    IMAGES_HELP,
    CLIError,
    add_backbone_flags,
    add_command,
    add_reader_flags,
    backbone_weights,
    image_listing,
    image_specs,
    positive_int,
    report_skipped,
    write_npz_atomic,
    wrote,
)

DEFAULT_IMAGE_SIZE = 224
DEFAULT_BATCH_SIZE = 32


def add_embed(sub):
    p = add_command(
        sub,
        "embed",
        "image files -> a frozen pretrained backbone's pooled features, written to an .npz of "
        "x_db float32 (N, D), sources and, for class sub-folders, y_db and class_names: the "
        "input of gpq train --data npz:EMB.npz --backbone mlp",
        "gpq embed --backbone resnet50 --images photos/ --output photos_emb.npz",
        run_embed,
    )
    add_backbone_flags(
        p,
        f"{' | '.join(APPLICATIONS)} (keras.applications) | kerashub:PRESET_OR_PATH (a KerasHub "
        "preset or its saved folder; needs gpq-keras[hub])",
        required=True,
    )
    p.add_argument(
        "--images",
        required=True,
        action="append",
        metavar="DIR_OR_GLOB",
        help=IMAGES_HELP.split("; give it again")[0] + "; give it again for more (class folders "
        "and images without a class go into separate files: embed a pool on its own, for gpq "
        "train --unlabeled)",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="EMB.npz",
        help="the embeddings' .npz, replaced atomically; its folder must exist",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=DEFAULT_IMAGE_SIZE,
        metavar="N",
        help=f"images are resized to N x N before the backbone ({DEFAULT_IMAGE_SIZE})",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"images decoded and embedded at a time: memory is bounded by it "
        f"({DEFAULT_BATCH_SIZE})",
    )
    add_reader_flags(p)


def _weights_text(backbone, weights):
    from gpq_keras.files import display_path

    if weights is None:
        return "the preset's weights" if backbone.startswith("kerashub:") else "random weights"
    return "imagenet weights" if weights == "imagenet" else f"weights {display_path(weights)}"


def _readable(paths, args):
    """(positions of the files that can be embedded, [(path, reason)] of those left out).

    Without `--skip-unreadable` only the headers are checked here (the first bad one raises,
    before the backbone is built); a file whose pixels do not decode is named while it streams.
    With it every file is also decoded once, a batch at a time, so that the stream never meets
    one (as `gpq train` does with a streamed folder)."""
    import numpy as np

    from gpq_keras.data.images import check_image_files, read_images

    if not args.skip_unreadable:
        return check_image_files(paths, max_pixels=args.max_pixels)
    kept, skipped = [], []
    chunk = max(args.batch_size, 256)
    for start in range(0, len(paths), chunk):
        got = read_images(
            paths[start : start + chunk],
            args.image_size,
            batch_size=args.batch_size,
            max_pixels=args.max_pixels,
            skip_unreadable=True,
        )
        kept.append(got.kept + start)
        skipped += got.skipped
    return np.concatenate(kept).astype(np.int64), skipped


def run_embed(args):
    import numpy as np

    from gpq_keras.files import display_path

    weights = backbone_weights(args)
    listing = image_listing(args)  # listed (and checked against --output) by the path guard
    shown = " ".join(display_path(spec) for spec in image_specs(args))
    if listing.labels is not None and (np.asarray(listing.labels) < 0).any():
        raise CLIError(
            f"--images {shown}: class folders and images without a class in one file; embed "
            "the unlabeled images into a file of their own (for gpq train --unlabeled)"
        )
    paths = list(listing.paths)
    kept, skipped = _readable(paths, args)
    skipped = list(listing.skipped) + list(skipped)
    report_skipped(skipped)
    if not len(kept):
        raise CLIError(
            f"--images {shown}: none of its {len(skipped)} image files could be read; nothing "
            "written"
        )
    paths = [paths[i] for i in kept]

    from gpq_keras.backbones import build_feature_extractor
    from gpq_keras.data import eval_input
    from gpq_keras.data.image_files import ImageFiles, reraise_file_errors

    size = args.image_size
    extractor = build_feature_extractor(args.backbone, (size, size, 3), weights=weights)
    files = ImageFiles(paths, image_size=size, max_pixels=args.max_pixels)
    terminal = sys.stdout.isatty()  # Keras' progress bar goes to stdout
    if terminal:
        print(f"embedding {len(files)} images with {args.backbone}", file=sys.stderr)
    with reraise_file_errors():
        features = extractor.predict(
            eval_input(files, "auto", args.batch_size), verbose=1 if terminal else 0
        )
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) != len(paths):
        raise CLIError(
            f"--backbone {args.backbone} gave features {features.shape} for {len(paths)} images; "
            "expected (N, D)"
        )
    if not np.isfinite(features).all():
        row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise CLIError(
            f"--backbone {args.backbone} gave NaN or infinite features (first for "
            f"{display_path(paths[row])}); nothing written"
        )
    arrays = {
        "x_db": np.ascontiguousarray(features),
        "sources": np.array([os.path.abspath(p) for p in paths], dtype=str),
    }
    if listing.labels is not None:
        arrays["y_db"] = np.asarray(listing.labels, np.int64)[np.asarray(kept, np.intp)]
        arrays["class_names"] = np.array(list(listing.class_names), dtype=str)
    write_npz_atomic(args.output, **arrays)
    what = (
        f"{len(paths)} images, {features.shape[1]} dims ({args.backbone}, "
        f"{_weights_text(args.backbone, weights)}, {size}x{size})"
    )
    if listing.labels is not None:
        what += f", {len(listing.class_names)} classes"
    wrote(args.output, what)
