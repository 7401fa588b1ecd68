"""`gpq index build|add|remove|dedup|search` (a saved PQIndex or faiss file) and `gpq search`
(image files)."""

import argparse
import os
import sys

from gpq_keras.cli.common import (
    DATA_HELP,
    IMAGES_HELP,
    CLIError,
    add_command,
    add_model_and_data,
    add_protocol_flags,
    add_reader_flags,
    add_strategy_flag,
    add_wait_flag,
    encode_images,
    image_listing,
    image_specs,
    load_model,
    load_model_and_data,
    non_negative_int,
    not_chief,
    positive_int,
    report_skipped,
    write_npz_atomic,
    wrote,
)
from gpq_keras.config import RETRIEVAL_MODES


def add_index(sub):
    p = add_command(
        sub,
        "index",
        "build or search a saved PQ index",
        "gpq index build --model runs/demo/model.keras --data digits --output runs/demo/index.npz",
        None,
    )
    index_sub = p.add_subparsers(dest="index_command", required=True)
    _add_index_build(index_sub)
    _add_index_add(index_sub)
    _add_index_remove(index_sub)
    _add_index_dedup(index_sub)
    _add_index_search(index_sub)


def _id_list(text):
    """An argparse type: comma-separated ids >= 0 ("3,5,8") -> a list of int."""
    ids = []
    for part in text.split(","):
        try:
            ids.append(int(part))
        except ValueError:
            ids.append(-1)
        if ids[-1] < 0:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated ids >= 0 such as 3,5,8, got {text!r}"
            )
    return ids


def _finite_float(text):
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not abs(value) < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


THRESHOLD_HELP = (
    "also group items whose symmetric distance sum_m (1 - z_m[a] . z_m[b]) is <= T: the ADC "
    "distance `search` ranks by, with one item's reconstruction as the query; groups chain "
    "close pairs (single linkage). Default: equal codes only"
)


def _add_index_build(index_sub):
    b = add_command(
        index_sub,
        "build",
        "encode a data set's database, or image files, into a saved index",
        "gpq index build --model runs/photos/model.keras --images photos/ --output photos.npz",
        run_index_build,
    )
    b.add_argument("--model", required=True, help="a GPQ .keras file")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=DATA_HELP + " (its database part)")
    source.add_argument("--images", action="append", help=IMAGES_HELP)
    add_protocol_flags(b)
    add_reader_flags(b)
    add_strategy_flag(b, "encode")
    b.add_argument(
        "--output",
        required=True,
        help="index file (.npz PQIndex, or a faiss index with --faiss and its checksums in "
        "OUTPUT.gpq.json), replaced atomically; its folder must exist",
    )
    add_wait_flag(b)
    b.set_defaults(output_paths=_build_outputs)
    b.add_argument("--mode", choices=RETRIEVAL_MODES, help="codebook (model's default)")
    b.add_argument(
        "--faiss",
        action="store_true",
        help="write a faiss IndexPQ instead (needs gpq-keras[faiss])",
    )
    b.add_argument(
        "--fast-scan",
        action="store_true",
        help="with --faiss: an IndexPQFastScan (4-bit, K=16; approximate, much faster)",
    )
    b.add_argument(
        "--nlist",
        type=positive_int,
        help="with --faiss: an inverted file (IndexIVFPQFastScan, K=16) of NLIST lists, for "
        "millions",
    )
    b.add_argument(
        "--nprobe",
        type=positive_int,
        default=1,
        help="with --nlist: lists searched by default (1)",
    )


def _add_index_add(index_sub):
    a = add_command(
        index_sub,
        "add",
        "encode image files and append them to a saved index of files",
        "gpq index add --model runs/photos/model.keras --index photos.npz --images new_photos/",
        run_index_add,
    )
    a.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    a.add_argument(
        "--index",
        required=True,
        help="a PQIndex .npz of files; replaced atomically, locked meanwhile (other writers wait)",
    )
    a.add_argument(
        "--images",
        required=True,
        action="append",
        help=IMAGES_HELP + "; files already in the index (same absolute path) are skipped",
    )
    a.add_argument(
        "--update",
        action="store_true",
        help="keep the index in step with --images: re-encode in place (same id) the indexed files "
        "whose size or modification time changed, skip the unchanged ones, and remove the items "
        "of files under --images that no longer exist; prints added, updated, unchanged and "
        "removed. A file indexed by an index older than format 4 (no stats) is re-encoded once",
    )
    add_reader_flags(a)
    add_strategy_flag(a, "encode")
    add_wait_flag(a)


def _add_index_remove(index_sub):
    r = add_command(
        index_sub,
        "remove",
        "remove items from a saved index, by id or by file; the others keep their ids",
        "gpq index remove --index photos.npz --images 'photos/old/**/*.jpg'",
        run_index_remove,
    )
    r.add_argument(
        "--index",
        required=True,
        help="a PQIndex .npz; replaced atomically, locked meanwhile (other writers wait)",
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--ids",
        type=_id_list,
        help="comma-separated ids, as `gpq search --json` and `gpq index dedup` give them: 3,5,8",
    )
    which.add_argument(
        "--images",
        dest="patterns",
        action="append",
        metavar="DIR_OR_GLOB",
        help="the items whose stored absolute path lies in this folder (any depth) or matches "
        "this glob ('**': any folders), whether the files still exist or not; give it again "
        "for more",
    )
    add_wait_flag(r)


def _add_index_dedup(index_sub):
    d = add_command(
        index_sub,
        "dedup",
        "list the groups of near-duplicate items of a saved index (equal codes, or a symmetric "
        "distance <= --threshold)",
        "gpq index dedup --index photos.npz --threshold 0.5 --json duplicates.json",
        run_index_dedup,
    )
    d.add_argument("--index", required=True, help="a PQIndex .npz")
    d.add_argument("--threshold", type=_finite_float, metavar="T", help=THRESHOLD_HELP)
    d.add_argument(
        "--json",
        help='write the groups here: {"index", "threshold", "items", "groups": [[{"id", '
        '"source"?}, ...], ...]} (threshold null: equal codes)',
    )


def _add_index_search(index_sub):
    s = add_command(
        index_sub,
        "search",
        "search a saved PQIndex with a data set's queries",
        "gpq index search --model runs/demo/model.keras --index runs/demo/index.npz --data digits "
        "-k 10",
        run_index_search,
    )
    add_model_and_data(s, "the GPQ .keras file that built the index")
    s.add_argument(
        "--index", required=True, help="a PQIndex .npz, or the faiss file of `index build --faiss`"
    )
    s.add_argument(
        "--mode",
        choices=RETRIEVAL_MODES,
        help="for a faiss file: the mode it was built in (model's default)",
    )
    s.add_argument("-k", type=positive_int, default=10, help="results per query (10)")
    s.add_argument(
        "--nprobe", type=positive_int, help="for an inverted-file faiss index: lists to search"
    )
    s.add_argument(
        "--approximate",
        action="store_true",
        help="for a PQIndex with K=16 and faiss: fast-scan results as they are, not re-ranked "
        "exactly",
    )
    s.add_argument("--output", help="write distances and ids to this .npz")
    s.add_argument(
        "--show",
        type=non_negative_int,
        default=3,
        help="print the results of the first N queries (3)",
    )


def add_search(sub):
    p = add_command(
        sub,
        "search",
        "the most similar indexed images to one or more image files (printed: rank, distance, "
        "class, the file's absolute path)",
        "gpq search --model runs/photos/model.keras --index photos.npz --image query.jpg -k 10",
        run_search,
    )
    p.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    p.add_argument("--index", required=True, help="a PQIndex .npz (of files: results name them)")
    p.add_argument(
        "--image", required=True, action="append", help="a query image file (repeat for more)"
    )
    add_reader_flags(p)
    p.add_argument(
        "-k",
        type=positive_int,
        default=10,
        help="results per query, capped at the index size (10)",
    )
    p.add_argument(
        "--json",
        help='write the results here: {"index", "model", "k", "queries": [{"query": FILE as '
        'given, "results": [{"rank", "id", "distance", "class"?, "source"?}]}]}, each "source" '
        "the absolute path of the indexed file (a relative one stored by an older index is "
        "resolved against the index file's folder)",
    )
    p.add_argument("--figure", help="write the first query and its top 15 results to this PNG")
    p.add_argument(
        "--unique",
        action="store_true",
        help="collapse near-duplicates (the groups of `gpq index dedup`): keep the best-ranked "
        "item of each group, filling the k results from further down",
    )
    p.add_argument(
        "--unique-threshold",
        type=_finite_float,
        metavar="T",
        help="with --unique: " + THRESHOLD_HELP,
    )
    add_strategy_flag(p, "encode")


# --- wiring ---------------------------------------------------------------------------------------


def _build_outputs(args):
    """The files `index build` writes, for the path guard: the index, and a faiss file's
    sidecar."""
    outputs = [("--output", args.output, "file")]
    if args.faiss:
        outputs.append(("--output", args.output + ".gpq.json", "file"))
    return outputs


def _progress(message):
    """A line of progress on stderr, on a terminal only (a script's stderr keeps errors alone)."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr)


def _add_files(index, model, paths, labels, args):
    """Encode image files into `index` (chunk by chunk, a progress bar on a terminal), each with its
    absolute path as its source -> `AddedFiles(added, already_indexed, skipped, updated)`; with
    `--update`, changed files re-encoded in place."""
    _progress(f"encoding {len(paths)} images")
    return index.add_files(
        paths,
        labels=labels,
        verbose=1 if sys.stdout.isatty() else 0,
        model=model,
        max_pixels=args.max_pixels,
        skip_unreadable=args.skip_unreadable,
        update=getattr(args, "update", False),
    )


def _decode_files(model, paths, args):
    """`DecodedImages(images, kept, skipped)` of image files at the model's input size, decoded
    and resized as training data is (uint8 (n, H, W, 3)), read with `--max-pixels` and
    `--skip-unreadable`."""
    from gpq_keras.data.images import read_images

    return read_images(
        paths,
        model.gpq_config.image_shape[:2],
        max_pixels=args.max_pixels,
        skip_unreadable=args.skip_unreadable,
    )


def _labels_for(index, listing, shown):
    """The labels of `listing`'s files in `index`'s classes (a class new to the index gets the
    next id: `index.class_names` grows), or None for an index without classes; a CLIError when
    they do not fit together."""
    import numpy as np

    if index.ntotal and index.sources is None:
        raise CLIError(
            f"{shown} was built from a data set (no file names); build a new index of files"
        )
    if index.labels is None and not (index.ntotal == 0 and index.class_names is not None):
        return None
    from gpq_keras.data.user import NO_CLASS

    if index.class_names is None:
        raise CLIError(f"{shown} has labels without class names; build a new index of files")
    if listing.labels is None:  # an unlabeled pool beside the classes: no class
        return np.full(len(listing.paths), NO_CLASS, np.int64)
    names = list(index.class_names)
    names += [name for name in listing.class_names if name not in names]
    index.class_names = names
    ids = np.array([names.index(name) for name in listing.class_names] + [NO_CLASS], np.int64)
    return ids[listing.labels]  # NO_CLASS (-1, the last entry) stays NO_CLASS


# --- the commands ---------------------------------------------------------------------------------


def run_index_build(args):
    from gpq_keras.files import display_path
    from gpq_keras.retrieval import PQIndex

    if (args.fast_scan or args.nlist) and not args.faiss:  # before any work
        raise CLIError("--fast-scan and --nlist build faiss indexes: add --faiss")
    if args.faiss:
        from gpq_keras.retrieval import import_faiss

        import_faiss()  # "faiss is not installed" before any other complaint
    skipped = []
    if args.images:  # image files: every one indexed, with its path (and class from its sub-folder)
        listing = image_listing(args)  # listed by the path guard
        skipped += listing.skipped
        model, chief = load_model(args)
        index = PQIndex.from_model(model, mode=args.mode, class_names=listing.class_names)
        skipped += _add_files(index, model, listing.paths, listing.labels, args).skipped
        if not index.ntotal:
            report_skipped(skipped)
            raise CLIError(
                f"--images {' '.join(display_path(p) for p in image_specs(args))}: none of its "
                f"{len(skipped)} image files "
                "could be read; nothing written"
            )
    else:
        model, split, chief = load_model_and_data(args)
        index = PQIndex.from_model(model, mode=args.mode)
        index.add(encode_images(model, split.x_db, "database"), labels=split.y_db)
    if not chief:
        return not_chief(args.output)
    if args.faiss:
        from gpq_keras.files import file_lock
        from gpq_keras.retrieval import write_faiss_index

        try:
            built = index.to_faiss(fast_scan=args.fast_scan, nlist=args.nlist, nprobe=args.nprobe)
        except ValueError as exc:
            raise CLIError(f"--faiss: {exc}") from None
        with file_lock(args.output, args.wait):  # one writer at a time; readers check the sidecar
            write_faiss_index(built, args.output, index.pq, index.model_fingerprint)
    else:
        from gpq_keras.retrieval import index_writer

        with index_writer(args.output, wait=args.wait, create=lambda: index):
            pass  # a build replaces the file, locked, atomically
    report_skipped(skipped)
    wrote(
        args.output,
        f"{index.ntotal} items, {model.gpq_config.bits} bits ({index.mode} mode)",
    )


def run_index_add(args):
    from gpq_keras.files import display_path
    from gpq_keras.retrieval import PQIndex, index_writer

    shown = display_path(args.index)
    listing = image_listing(args)
    # what can be refused before the model loads: the index (damaged, not a PQIndex), its classes
    _labels_for(PQIndex.load(args.index), listing, shown)
    model, chief = load_model(args)
    if not chief:  # encodes with the chief (a collective), writes nothing
        index = PQIndex.load(args.index)
        index.check_model(model)
        _add_files(index, model, listing.paths, _labels_for(index, listing, shown), args)
        return not_chief(args.index)
    with index_writer(args.index, wait=args.wait) as index:  # re-read inside the lock
        index.check_model(model)
        added = _add_files(index, model, listing.paths, _labels_for(index, listing, shown), args)
        removed = 0
        if args.update:  # the items of files under --images that no longer exist
            removed = index.remove(index.ids_for_files(image_specs(args), missing=True))
    report_skipped(listing.skipped + added.skipped)
    already = len(added.already_indexed)
    if args.update:
        counts = (
            f"{added.added} added, {len(added.updated)} updated, {already} unchanged, "
            f"{removed} removed"
        )
    else:
        counts = f"{added.added} added" + (
            f", {already} already indexed, skipped" if already else ""
        )
    wrote(args.index, f"{index.ntotal} items ({counts})")


def run_index_remove(args):
    from gpq_keras.files import display_path
    from gpq_keras.retrieval import index_writer

    shown = display_path(args.index)
    with index_writer(args.index, wait=args.wait) as index:  # nothing saved on an error
        if args.ids is not None:
            unknown = sorted(set(args.ids) - set(index.ids.tolist()))
            if unknown:
                raise CLIError(
                    f"--ids: {shown} holds no item with id {', '.join(map(str, unknown[:10]))}"
                    f"{' ...' if len(unknown) > 10 else ''}; nothing removed"
                )
            ids = args.ids
        else:
            patterns = " ".join(display_path(p) for p in args.patterns)
            if index.sources is None:
                raise CLIError(
                    f"--images: {shown} holds no file names (built from a data set); use --ids"
                )
            ids = index.ids_for_files(args.patterns)
            if not len(ids):
                raise CLIError(f"--images {patterns}: no item of {shown} is there; nothing removed")
        removed = index.remove(ids)
    wrote(args.index, f"{index.ntotal} items ({removed} removed)")


def _load_pqindex(path, flag="--index"):
    """The PQIndex `.npz` at `path`; a CLIError for a faiss file."""
    from gpq_keras.files import display_path
    from gpq_keras.retrieval import open_index

    index = open_index(path)
    if index is None:
        raise CLIError(f"{flag} {display_path(path)} is a faiss file; this needs a PQIndex .npz")
    return index


def run_index_dedup(args):
    from gpq_keras.files import display_path, write_json

    index = _load_pqindex(args.index)
    groups = index.duplicate_groups(args.threshold)
    report = []
    for number, ids in enumerate(groups, start=1):
        items = [{"id": int(i)} for i in ids]
        if index.sources is not None:
            for item, source in zip(items, index.source_paths(ids).tolist()):
                item["source"] = source
        report.append(items)
        print(f"group {number} ({len(items)} items)")
        for item in items:
            print(f"  {item['id']:>6}  {display_path(item.get('source', ''))}")
    criterion = "equal codes" if args.threshold is None else f"distance <= {args.threshold:g}"
    print(
        f"{len(groups)} groups of near-duplicates ({criterion}): "
        f"{sum(len(g) for g in groups)} of {index.ntotal} items"
    )
    if args.json:
        write_json(
            args.json,
            {
                "index": os.path.abspath(args.index),
                "threshold": args.threshold,
                "items": index.ntotal,
                "groups": report,
            },
        )
        wrote(args.json)


def run_index_search(args):
    from gpq_keras.files import display_path
    from gpq_keras.retrieval import FaissFileIndex, open_index

    shown = display_path(args.index)

    def check_k(index):
        if args.k > index.ntotal:
            raise CLIError(f"-k {args.k} exceeds the {index.ntotal} items in {shown}")

    index = open_index(args.index)  # a PQIndex, or None for a faiss file: it needs the model
    if index is not None:  # before any model is loaded
        check_k(index)
    model, split, chief = load_model_and_data(args)
    if index is None:
        index = open_index(args.index, model, args.mode)
    else:
        index.check_model(model)
    check_k(index)  # a faiss file: once opened with the model
    queries = encode_images(model, split.x_query, "query")
    if args.nprobe is not None and not getattr(index, "inverted", False):
        raise CLIError(
            f"--nprobe: {shown} is not an inverted-file faiss index (index build --faiss --nlist)"
        )
    if isinstance(index, FaissFileIndex):
        if args.approximate:
            raise CLIError(
                "--approximate is for a PQIndex .npz; a faiss file searches as it was built"
            )
        distances, ids = index.search(queries, args.k, nprobe=args.nprobe)
    else:
        import warnings

        with warnings.catch_warnings():  # said once, below, in the command's own words
            warnings.simplefilter("ignore", UserWarning)
            distances, ids = index.search(queries, args.k, exact=not args.approximate)
        if args.approximate and index.nbits == 4:
            print(
                "approximate: fast-scan results with 8-bit look-up-table distances, not re-ranked"
            )
    if args.output and not chief:
        not_chief(args.output)
    elif args.output:
        write_npz_atomic(args.output, distances=distances, ids=ids)
        wrote(args.output, f"top {args.k} of {len(ids)} queries")
    for q in range(min(len(ids), args.show)):
        print(f"query {q}: " + " ".join(f"{i}({d:.3f})" for i, d in zip(ids[q], distances[q])))


def run_search(args):
    from gpq_keras.files import display_path, write_json
    from gpq_keras.retrieval import open_index

    if args.unique_threshold is not None and not args.unique:
        raise CLIError("--unique-threshold sets the groups of --unique: add --unique")
    model, chief = load_model(args)
    index = open_index(args.index, model)
    groups = None
    if args.unique:
        from gpq_keras.retrieval import PQIndex

        if not isinstance(index, PQIndex):
            raise CLIError(f"--unique: {display_path(args.index)} is a faiss file, not a PQIndex")
        groups = index.duplicate_labels(args.unique_threshold)
    decoded = _decode_files(model, args.image, args)
    report_skipped(decoded.skipped)
    query_paths = [args.image[i] for i in decoded.kept]
    if not query_paths:
        raise CLIError(f"none of the {len(args.image)} --image files could be read")
    available = index.ntotal if groups is None else int(groups.max(initial=-1)) + 1
    k = min(args.k, available)
    if k < args.k:
        what = "items" if groups is None else "groups of near-duplicates (--unique)"
        print(
            f"-k {args.k} capped at the {available} {what} of {display_path(args.index)}",
            file=sys.stderr,
        )
    if groups is None:
        distances, ids = index.search(model.encode(decoded.images), k)
    else:
        distances, ids = index.search_unique(model.encode(decoded.images), k, labels=groups)
    report = _print_hits(query_paths, index, distances, ids)
    if not chief:
        for path in filter(None, (args.json, args.figure)):
            not_chief(path)
        return
    if args.json:
        write_json(
            args.json,
            {
                "index": os.path.abspath(args.index),
                "model": os.path.abspath(args.model),
                "k": k,
                "queries": report,
            },
        )
        wrote(args.json)
    if args.figure:
        _write_figure(args, model, index, query_paths[0], decoded.images[0], report[0]["results"])


def _print_hits(query_paths, index, distances, ids):
    """Print each query's hits (rank, distance, class, source: the absolute path of the file, on
    one line whatever its name) -> the report of `--json` (`lookups`)."""
    from gpq_keras.files import display_path
    from gpq_keras.retrieval.lookup import lookups

    report = lookups(index, query_paths, distances, ids)
    for record in report:
        print(f"query {display_path(record['query'])}")
        for hit in record["results"]:
            print(
                f"{hit['rank']:>4}  {hit['distance']:8.4f}  {display_path(hit.get('class', '-'))}  "
                f"{display_path(hit['source']) if 'source' in hit else hit['id']}"
            )
    return report


def _write_figure(args, model, index, query_path, query, hits):
    """The first query image and its top results (their files decoded again) in one PNG."""
    from gpq_keras import viz
    from gpq_keras.files import display_path

    shown = hits[: viz.MAX_RESULTS]
    if index.sources is None:
        raise CLIError(f"{display_path(args.index)} holds no file names to show in --figure")
    decoded = _decode_files(model, [hit["source"] for hit in shown], args)
    report_skipped(decoded.skipped)  # results whose files cannot be read now: not shown
    shown, images = [shown[i] for i in decoded.kept], decoded.images
    captions = [
        display_path(os.path.basename(hit["source"]))
        + (f" ({display_path(hit['class'])})" if "class" in hit else "")
        for hit in shown
    ]
    viz.plot_ranked_list(
        query,
        images,
        path=args.figure,
        captions=captions,
        title=f"{display_path(os.path.basename(query_path))}: top {len(shown)} of {index.ntotal}",
    )
    wrote(args.figure)
