"""`gpq evaluate` (mAP on a data set, with a JSON report and a figure) and `gpq encode` (codes)."""

import os

from gpq_keras.cli.common import (
    CLIError,
    add_command,
    add_model_and_data,
    encode_images,
    load_model_and_data,
    non_negative_int,
    not_chief,
    positive_int,
    write_npz_atomic,
    wrote,
)
from gpq_keras.config import RETRIEVAL_MODES


def add_evaluate(sub):
    p = add_command(
        sub,
        "evaluate",
        "mAP (the paper's protocol) of a model on a data set's queries and database",
        "gpq evaluate --model runs/demo/model.keras --data digits --json eval.json "
        "--figure ranked.png",
        run_evaluate,
    )
    add_model_and_data(p)
    p.add_argument(
        "--split",
        metavar="RUN_DIR",
        help="evaluate on the queries and database a training run used: its folder (or its "
        "split.npz); the protocol and seed come from it, and a change in the data is refused",
    )
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook at retrieval (model's default)"
    )
    p.add_argument(
        "--top-k", type=positive_int, help="mAP over the top K (default: the whole database)"
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--figure",
        help="write ranked lists (top 15) to this PNG: the best, the median and the "
        "worst query by AP, or --query",
    )
    p.add_argument("--query", type=non_negative_int, help="the one query the figure shows")


def add_encode(sub):
    p = add_command(
        sub,
        "encode",
        "encode a data set's database into PQ codes",
        "gpq encode --model runs/demo/model.keras --data digits --output codes.npz",
        run_encode,
    )
    add_model_and_data(p)
    p.add_argument("--output", required=True, help=".npz with features, codes (uint8) and labels")
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook for the codes (model's default)"
    )


def _run_split(args):
    """The data options of the training run `--split` names (protocol, seed, per-class counts)
    -> (options for the loader, the arrays of its split.npz)."""
    from gpq_keras.data import spec_kind
    from gpq_keras.files import display_path, read_npz
    from gpq_keras.training import RunDirectory

    path = args.split
    run = RunDirectory(path if os.path.isdir(path) else os.path.dirname(path))
    stored = read_npz(run.split if os.path.isdir(path) else path, "split file")
    settings = (run.read_record() or {}).get("settings") or {}
    protocol, seed = str(stored["protocol"]), int(stored["seed"])
    given = settings.get("protocol")
    for flag, mine, theirs in (("--protocol", args.protocol, given), ("--seed", args.seed, seed)):
        if mine not in (None, 0) and theirs is not None and mine != theirs:
            raise CLIError(
                f"{flag} {mine}: the run in {display_path(run.path)} used {flag} {theirs}; leave "
                "it out with --split"
            )
    args.protocol, args.seed = given or None, seed
    options = {}
    if settings.get("labeled_per_class") is not None:
        options["labeled_per_class"] = settings["labeled_per_class"]
    if (
        spec_kind(args.data) == "folder"
        and (given or "given") == "given"
        and "labeled_per_class" not in options
    ):
        options["query_per_class"] = settings.get("val_per_class")
    return {k: v for k, v in options.items() if v is not None}, stored, protocol


def _evaluation_data(args):
    """(model, split, chief) of `--data`, or of the run `--split` names, checked against it."""
    from gpq_keras.cli.common import load_data, load_model
    from gpq_keras.data.split import compare_split_arrays, split_arrays
    from gpq_keras.files import display_path

    if not args.split:
        return load_model_and_data(args)
    options, stored, protocol = _run_split(args)
    model, chief = load_model(args)
    split = load_data(args, model.gpq_config.image_shape, **options)
    model.check_inputs(split.x_db)
    current = split_arrays(split)
    wanted = ("query_paths", "query_index", "database_paths", "database_index")
    changed = compare_split_arrays(
        {k: v for k, v in stored.items() if k in wanted},
        {k: v for k, v in current.items() if k in wanted},
        display_path(args.split),
    )
    if changed:
        raise CLIError(changed)
    print(f"the queries and database of {display_path(args.split)} ({protocol} protocol)")
    return model, split, chief


def run_evaluate(args):
    from gpq_keras import metrics
    from gpq_keras.retrieval import PQIndex

    model, split, chief = _evaluation_data(args)
    if split.x_query is None:
        raise CLIError(
            f"data {args.data!r} has no queries under the {split.protocol} protocol; give "
            "--protocol, or --split RUN_DIR"
        )
    if args.query is not None and not 0 <= args.query < len(split.x_query):
        raise CLIError(f"--query {args.query} is out of range (0..{len(split.x_query) - 1})")
    top_k = args.top_k or len(split.x_db)
    if top_k > len(split.x_db):
        raise CLIError(f"--top-k {top_k} exceeds the {len(split.x_db)} database items")
    database = encode_images(model, split.x_db, "database")
    index = PQIndex.from_model(model, mode=args.mode).add(database)
    queries = encode_images(model, split.x_query, "query")
    result = metrics.evaluate_ranking(
        index.rank(queries, top_k, with_distances=False), split.y_query, split.y_db
    )
    print(f"mAP: {result['mAP']:.4f}")
    for k, value in sorted(result["precision"].items()):
        print(f"precision@{k}: {value:.4f}")
    unseen_all = None
    if split.x_db_all is not None:  # unseen: the unseen queries among every class's database
        everything = PQIndex.from_model(model, mode=args.mode).add(
            encode_images(model, split.x_db_all, "database (every class)")
        )
        k_all = min(args.top_k or len(split.x_db_all), len(split.x_db_all))
        unseen_all = metrics.evaluate_ranking(
            everything.rank(queries, k_all, with_distances=False), split.y_query, split.y_db_all
        )
        print(f"mAP unseen@all: {unseen_all['mAP']:.4f} ({len(split.x_db_all)} database images)")
    report = {
        "mAP": result["mAP"],
        "top_k": top_k,
        "bits": model.gpq_config.bits,
        "n_query": len(split.x_query),
        "n_database": len(split.x_db),
        "mode": index.mode,
        "precision_at_k": {str(k): v for k, v in result["precision"].items()},
        "data": args.data,
        "model": os.path.abspath(args.model),
        "protocol": split.protocol,
        "seed": split.seed,
    }
    if unseen_all is not None:
        report["unseen@unseen"] = result["mAP"]
        report["unseen@all"] = unseen_all["mAP"]
        report["n_database_all"] = len(split.x_db_all)
        report["seen_classes"] = [int(c) for c in split.seen_classes]
        report["unseen_classes"] = [int(c) for c in split.unseen_classes]
    if not chief:
        for path in filter(None, (args.json, args.figure)):
            not_chief(path)
        return
    if args.json:
        from gpq_keras.files import write_json

        write_json(args.json, report)
        wrote(args.json)
    if args.figure:
        _write_figure(args, split, index, queries, result["ap"])


def _write_figure(args, split, index, queries, ap):
    """The ranked lists of --query, or of the best, the median and the worst query by AP."""
    import numpy as np

    from gpq_keras import metrics, viz
    from gpq_keras.data.image_files import take

    if args.query is None:  # a good, a median and a bad query by AP, not only successes
        picks = viz.pick_queries_by_ap(ap)
    else:
        picks = {"query": args.query}
    names = getattr(split, "class_names", None)

    def class_of(labels):
        if names is None or np.ndim(labels) != 1:
            return None
        return [names[int(c)] for c in labels]

    blocks = []
    for what, query in picks.items():
        distances, ids = index.search(queries[query : query + 1], viz.MAX_RESULTS)
        relevant = metrics.relevance(split.y_query[query : query + 1], split.y_db[ids[0]])[0]
        query_class = class_of(split.y_query[query : query + 1])
        blocks.append(
            dict(
                query_image=take(split.x_query, [query])[0],
                result_images=take(split.x_db, ids[0]),
                relevant=relevant,
                classes=class_of(split.y_db[ids[0]]),
                distances=distances[0],
                query_class=None if query_class is None else query_class[0],
                title=("" if what == "query" else f"{what}\n")
                + f"query {query}\nAP {ap[query]:.2f}",
            )
        )
    viz.plot_ranked_lists(blocks, args.figure)
    wrote(args.figure, ", ".join(f"{what} query {q} (AP {ap[q]:.4f})" for what, q in picks.items()))


def run_encode(args):
    import numpy as np

    from gpq_keras.retrieval import ProductQuantizer

    model, split, chief = load_model_and_data(args)
    features = encode_images(model, split.x_db, "database")
    mode = args.mode or model.gpq_config.retrieval_mode
    codes = ProductQuantizer.from_model(model, mode).encode(features)
    if not chief:
        return not_chief(args.output)
    write_npz_atomic(args.output, features=features, codes=codes, labels=np.asarray(split.y_db))
    wrote(args.output, f"{len(codes)} codes of {model.gpq_config.bits} bits ({mode} mode)")
