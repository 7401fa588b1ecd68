"""`gpq index build|add|search` (a saved PQIndex or faiss file) and `gpq search` (image files)."""

import os
import sys

from gpq_keras.cli.common import (
    DATA_HELP,
    IMAGES_HELP,
    CLIError,
    add_command,
    add_model_and_data,
    add_strategy_flag,
    encode_images,
    load_model,
    load_model_and_data,
    non_negative_int,
    not_chief,
    positive_int,
    write_npz_atomic,
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
    _add_index_search(index_sub)


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
    source.add_argument("--images", help=IMAGES_HELP)
    add_strategy_flag(b, "encode")
    b.add_argument(
        "--output", required=True, help="index file (.npz PQIndex, or a faiss index with --faiss)"
    )
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
    a.add_argument("--index", required=True, help="a PQIndex .npz of files; replaced atomically")
    a.add_argument("--images", required=True, help=IMAGES_HELP)
    add_strategy_flag(a, "encode")


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
        "the most similar indexed images to one or more image files",
        "gpq search --model runs/photos/model.keras --index photos.npz --image query.jpg -k 10",
        run_search,
    )
    p.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    p.add_argument("--index", required=True, help="a PQIndex .npz (of files: results name them)")
    p.add_argument(
        "--image", required=True, action="append", help="a query image file (repeat for more)"
    )
    p.add_argument(
        "-k",
        type=positive_int,
        default=10,
        help="results per query, capped at the index size (10)",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--figure", help="write the first query and its top 15 results to this PNG")
    add_strategy_flag(p, "encode")


# --- wiring ---------------------------------------------------------------------------------------


def _add_files(index, model, paths, labels):
    """Encode image files into `index` (chunk by chunk, a progress bar on a terminal), each with its
    path as its source."""
    print(f"encoding {len(paths)} images", file=sys.stderr)
    index.add_files(paths, labels=labels, verbose=1 if sys.stdout.isatty() else 0, model=model)


def _decode_files(model, paths):
    """uint8 pixels (N, H, W, 3) of image files at the model's input size, decoded and resized as
    training data is."""
    from gpq_keras.data.images import decode_images

    return decode_images(paths, model.gpq_config.image_shape[:2])


# --- the commands ---------------------------------------------------------------------------------


def run_index_build(args):
    from gpq_keras.retrieval import PQIndex

    if args.images:  # image files: every one indexed, with its path (and class from its sub-folder)
        from gpq_keras.data.user import list_images

        model, chief = load_model(args)
        paths, labels, class_names = list_images(args.images)
        index = PQIndex.from_model(model, mode=args.mode, class_names=class_names)
        _add_files(index, model, paths, labels)
    else:
        model, split, chief = load_model_and_data(args)
        index = PQIndex.from_model(model, mode=args.mode)
        index.add(encode_images(model, split.x_db, "database"), labels=split.y_db)
    if not chief:
        return not_chief(args.output)
    if args.faiss:
        from gpq_keras.retrieval import import_faiss, write_faiss_index

        import_faiss()  # "faiss is not installed" before any other complaint
        try:
            built = index.to_faiss(fast_scan=args.fast_scan, nlist=args.nlist, nprobe=args.nprobe)
        except ValueError as exc:
            raise CLIError(f"--faiss: {exc}") from None
        write_faiss_index(built, args.output)
    elif args.fast_scan or args.nlist:
        raise CLIError("--fast-scan and --nlist build faiss indexes: add --faiss")
    else:
        index.save(args.output)
    print(
        f"wrote {args.output}: {index.ntotal} items, {model.gpq_config.bits} bits "
        f"({index.mode} mode)"
    )


def run_index_add(args):
    import numpy as np

    from gpq_keras.data.user import list_images
    from gpq_keras.retrieval import PQIndex

    index = PQIndex.load(args.index)
    model, chief = load_model(args)
    index.check_model(model)
    paths, labels, class_names = list_images(args.images)
    if index.ntotal and index.sources is None:
        raise CLIError(
            f"{args.index} was built from a data set (no file names); build a new index of files"
        )
    if index.labels is not None or (index.ntotal == 0 and index.class_names is not None):
        if labels is None or index.class_names is None:
            raise CLIError(f"{args.index} has classes; add a folder of class sub-folders")
        names = list(index.class_names)  # a class new to the index gets the next id
        names += [name for name in class_names if name not in names]
        index.class_names = names
        labels = np.array([names.index(name) for name in class_names], np.int64)[labels]
    else:
        labels = None
    before = index.ntotal
    _add_files(index, model, paths, labels)
    if not chief:
        return not_chief(args.index)
    index.save(args.index)  # replaced atomically
    print(f"wrote {args.index}: {index.ntotal} items ({index.ntotal - before} added)")


def run_index_search(args):
    from gpq_keras.retrieval import FaissFileIndex, open_index

    def check_k(index):
        if args.k > index.ntotal:
            raise CLIError(f"-k {args.k} exceeds the {index.ntotal} items in {args.index}")

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
            f"--nprobe: {args.index} is not an inverted-file faiss index (index build --faiss "
            "--nlist)"
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
        print(f"wrote {args.output}: top {args.k} of {len(ids)} queries")
    for q in range(min(len(ids), args.show)):
        print(f"query {q}: " + " ".join(f"{i}({d:.3f})" for i, d in zip(ids[q], distances[q])))


def run_search(args):
    from gpq_keras.files import write_json
    from gpq_keras.retrieval import open_index

    model, chief = load_model(args)
    index = open_index(args.index, model)
    k = min(args.k, index.ntotal)
    if k < args.k:
        print(f"-k {args.k} capped at the {index.ntotal} items of {args.index}", file=sys.stderr)
    queries = _decode_files(model, args.image)
    distances, ids = index.search(model.encode(queries), k)
    report = _print_hits(args.image, index, distances, ids)
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
        print(f"wrote {args.json}")
    if args.figure:
        _write_figure(args, model, index, queries[0], report[0]["results"])


def _print_hits(query_paths, index, distances, ids):
    """Print each query's hits (rank, distance, class, source) -> the report of `--json`."""
    sources = index.sources_for(ids) if index.sources is not None else None
    int_labels = index.labels is not None and index.labels.ndim == 1
    classes = index.class_names_for(ids) if index.class_names and int_labels else None
    report = []
    for q, path in enumerate(query_paths):
        print(f"query {path}")
        hits = []
        for rank, (i, d) in enumerate(zip(ids[q], distances[q]), start=1):
            hit = {"rank": rank, "id": int(i), "distance": float(d)}
            if classes is not None:
                hit["class"] = str(classes[q, rank - 1])
            if sources is not None:
                hit["source"] = str(sources[q, rank - 1])
            hits.append(hit)
            print(f"{rank:>4}  {d:8.4f}  {hit.get('class', '-')}  {hit.get('source', i)}")
        report.append({"query": path, "results": hits})
    return report


def _write_figure(args, model, index, query, hits):
    """The first query image and its top results (their files decoded again) in one PNG."""
    from gpq_keras import viz

    shown = hits[: viz.MAX_RESULTS]
    if index.sources is None:
        raise CLIError(f"{args.index} holds no file names to show in --figure")
    images = _decode_files(model, [hit["source"] for hit in shown])
    captions = [
        os.path.basename(hit["source"]) + (f" ({hit['class']})" if "class" in hit else "")
        for hit in shown
    ]
    viz.plot_ranked_list(
        query,
        images,
        path=args.figure,
        captions=captions,
        title=f"{os.path.basename(args.image[0])}: top {len(shown)} of {index.ntotal}",
    )
    print(f"wrote {args.figure}")
