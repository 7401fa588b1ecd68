"""The `gpq` command line: wires data -> model -> codes -> index -> metrics; holds no algorithm itself.

Parsing imports nothing heavy: `gpq --help` and argument errors answer without loading TensorFlow, and
TensorFlow's own start-up logging is silenced (`TF_CPP_MIN_LOG_LEVEL`) before it is first imported.
"""

import argparse
import json
import os
import sys
import textwrap

from gpq_keras.config import RETRIEVAL_MODES  # the standard library only: cheap to import

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
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


def _quiet_tensorflow():
    """Silence TensorFlow's C++ start-up lines (unless the user set the level) before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _write_npz_atomic(path, **arrays):
    import numpy as np

    from gpq_keras.files import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _features(model, images, label):
    """Raw features of uint8 images, with Keras' progress bar on a terminal."""
    print(f"encoding {len(images)} {label} images", file=sys.stderr)
    return model.encode(images, verbose=1 if sys.stderr.isatty() else 0)


def _strategy(args):
    """The `--strategy` of the command (created first: a multi-worker strategy sets up its collectives before
    TensorFlow runs anything else) and whether this process writes the outputs (not a non-chief worker)."""
    from gpq_keras.distribute import is_chief, make_strategy

    strategy = make_strategy(args.strategy)
    return strategy, is_chief(strategy)


def _load_model(args):
    """(model, whether this process writes the outputs), the model loaded under `--strategy`."""
    from gpq_keras.model import load_gpq

    strategy, chief = _strategy(args)
    with strategy.scope():
        return load_gpq(args.model), chief


def _load_model_and_data(args):
    """(model, split, whether this process writes the outputs), the model loaded under `--strategy`."""
    from gpq_keras.data import load_data

    model, chief = _load_model(args)
    split = load_data(args.data)
    model.check_images(split.x_db)
    return model, split, chief


def _not_chief(path):
    print(f"a non-chief worker: the chief writes {path}")


_FILE_CHUNK = 1024  # image files decoded and encoded at a time (bounded memory)


def _decode_files(model, paths):
    """uint8 pixels (N, H, W, 3) of image files at the model's input size, decoded and resized as training
    data is (`gpq_keras.data.user.decode_folder_images`)."""
    from gpq_keras.data.user import decode_folder_images

    return decode_folder_images(paths, model.gpq_config.image_shape[:2])


def _add_files(index, model, paths, labels):
    """Encode image files chunk by chunk (a progress bar on a terminal) and add them to `index`, each with
    its path as its source (and its label when `labels` is not None)."""
    import keras

    print(f"encoding {len(paths)} images", file=sys.stderr)
    bar = keras.utils.Progbar(len(paths), unit_name="image") if sys.stdout.isatty() else None
    for start in range(0, len(paths), _FILE_CHUNK):
        chunk = paths[start : start + _FILE_CHUNK]
        index.add(
            model.encode(_decode_files(model, chunk)),
            sources=chunk,
            labels=None if labels is None else labels[start : start + _FILE_CHUNK],
        )
        if bar is not None:
            bar.update(start + len(chunk))


def _is_npz(path):
    """Whether `path` is a zip file (a PQIndex .npz) rather than a faiss index."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index not found: {path}")
    with open(path, "rb") as fh:
        return fh.read(2) == b"PK"


def _open_index(path):
    """The PQIndex saved at `path` (`.npz`), or None for the faiss file of `index build --faiss` (it is
    opened with the model, `_index_for`). Needs no model: read before one is loaded."""
    from gpq_keras.retrieval import PQIndex

    return PQIndex.load(path) if _is_npz(path) else None


def _index_for(model, path, index, mode=None):
    """`index` (from `_open_index`), refused unless built with `model`; for a faiss file (None), a
    `_FaissIndex` whose codebook must be the model's (in `mode`)."""
    if index is None:
        return _FaissIndex(path, model, mode)
    index.check_model(model)
    return index


class _FaissIndex:
    """`gpq index build --faiss` output (IndexPQ, IndexPQFastScan or IndexIVFPQFastScan) searched like a
    PQIndex: queries prepared as the mode needs, distances M - inner product (faiss' similarities),
    refused unless its centroids are the model's."""

    def __init__(self, path, model, mode=None):
        import numpy as np

        from gpq_keras.files import FileFormatError
        from gpq_keras.retrieval import ProductQuantizer, import_faiss

        faiss = import_faiss()
        try:
            self.index = faiss.read_index(path)
        except RuntimeError as exc:
            raise FileFormatError(
                f"{path}: neither a PQIndex .npz nor a faiss index "
                f"({str(exc).strip().splitlines()[0]})"
            ) from None
        inner = self.index
        if isinstance(inner, faiss.IndexIDMap):
            inner = faiss.downcast_index(inner.index)
        self.inverted = isinstance(inner, faiss.IndexIVFPQFastScan)
        self.pq = ProductQuantizer.from_model(model, mode)
        centroids = None
        kinds = (faiss.IndexPQ, faiss.IndexPQFastScan, faiss.IndexIVFPQFastScan)
        if (
            isinstance(inner, kinds)
            and inner.d == self.pq.dim
            and inner.pq.M == self.pq.num_subspaces
        ):
            centroids = faiss.vector_to_array(inner.pq.centroids)
        words = self.pq.words.reshape(self.pq.num_codewords, self.pq.num_subspaces, -1).transpose(
            1, 0, 2
        )
        if (
            centroids is None
            or centroids.size != words.size
            or not np.allclose(centroids, words.ravel())
        ):
            raise ValueError(
                f"{path}: the faiss index was not built with this model in {self.pq.mode} mode "
                "(its codebook differs); rebuild it or pass the --mode it was built with"
            )
        self.ntotal = int(self.index.ntotal)
        self.sources = self.labels = self.class_names = (
            None  # a faiss file keeps codes and ids only
        )

    def search(self, queries, k, nprobe=None):
        if nprobe is not None:
            self.index.nprobe = nprobe
        similarities, ids = self.index.search(self.pq.prepare_queries(queries), k)
        return self.pq.num_subspaces - similarities, ids


# --- commands -------------------------------------------------------------------------------------


def _config_from_args(args, split, replicas=1):
    from gpq_keras.config import GPQConfig

    sync = replicas > 1 if args.sync_batch_norm is None else args.sync_batch_norm
    base = {
        "num_classes": split.num_classes,
        "image_shape": tuple(split.x_query.shape[1:]),
        "sync_batch_norm": sync,
    }
    if args.filters:
        base["filters"] = tuple(int(v) for v in args.filters.split(","))
    if args.learning_rate is not None:
        base["learning_rate"] = args.learning_rate
    if args.retrieval_mode:
        base["retrieval_mode"] = args.retrieval_mode
    if args.num_subspaces is not None or args.num_codewords is not None:
        return GPQConfig(
            num_subspaces=args.num_subspaces or 12, num_codewords=args.num_codewords or 16, **base
        )
    return GPQConfig.from_bits(args.bits or 48, **base)


def _jit_compile(choice):
    """--jit-compile: on, off, or auto (TensorFlow: XLA where a GPU is visible, on CPU it is slower, see
    README; JAX: always, as Keras compiles JAX steps)."""
    if choice == "auto":
        import keras

        if keras.config.backend() != "tensorflow":
            return True
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return choice == "on"


def _resume_check(run, settings):
    """Refuse to resume an interrupted run with other settings than it was started with."""
    record = run.read_record() or {}
    started = record.get("settings")
    if started is not None and started != settings:
        changed = sorted(
            k for k in set(started) | set(settings) if started.get(k) != settings.get(k)
        )
        raise CLIError(
            f"{run.path} holds an interrupted run with other settings ({', '.join(changed)}); rerun "
            "it with its own arguments to resume, or pass --restart to start over"
        )
    return record


def _init_from_model(model, path):
    """Give `model` the weights of the GPQ saved at `path`, which must have the same configuration."""
    from gpq_keras.model import load_gpq

    source = load_gpq(path)
    if source.gpq_config != model.gpq_config:
        mine, theirs = model.gpq_config.to_dict(), source.gpq_config.to_dict()
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CLIError(
            f"--init-model {path} has another configuration than this run ({', '.join(changed)})"
        )
    model.set_weights(source.get_weights())


def cmd_train(args):
    from gpq_keras.distribute import scratch_folder
    from gpq_keras.training import RunDirectory

    if args.bits is not None and args.num_codewords is not None:
        raise CLIError("give either --bits or --n-book/--n-word, not both")
    strategy, chief = _strategy(args)
    # Only the chief writes --output; another worker of a multi-worker run writes the same files to a
    # scratch folder of its own, cleared at each start (it resumes from the chief's state).
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
    import keras

    from gpq_keras.data import load_data
    from gpq_keras.data.split import default_validation_per_class, hold_out_validation
    from gpq_keras.distribute import check_global_batch, num_workers
    from gpq_keras.model import GPQ
    from gpq_keras.training import TrainingBackup, fit_run, new_record

    state = run.state()
    if state == "finished" and not args.overwrite:
        raise CLIError(
            f"{args.output} holds a finished run ({run.model}); pass --overwrite to train a new one there"
        )
    split = load_data(args.data)
    if not split.has_training_data:
        raise CLIError(f"data {args.data!r} has no labeled/unlabeled training images")
    per_class = (
        default_validation_per_class(split) if args.val_per_class is None else args.val_per_class
    )
    split, x_val, y_val = hold_out_validation(split, per_class)
    replicas = strategy.num_replicas_in_sync
    check_global_batch(min(args.batch_size, len(split.x_labeled), len(split.x_unlabeled)), strategy)
    config = _config_from_args(args, split, replicas)
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
    record = {}
    if state != "new" and (args.overwrite or args.restart):
        run.clear()
        print(f"removed the previous run in {args.output}")
    elif state == "interrupted":
        record = _resume_check(run, settings)
    stale = run.prepare()
    if stale:
        print(f"removed {len(stale)} temporary file(s) an interrupted write left in {args.output}")

    keras.utils.set_random_seed(args.seed)
    if (
        args.deterministic and keras.config.backend() == "tensorflow"
    ):  # XLA on CPU is deterministic as it is
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    with strategy.scope():
        model = GPQ(config, dtype=args.precision)
        resuming = TrainingBackup.has_backup(run.backup)
        if args.init_model and not resuming:
            _init_from_model(model, args.init_model)
            print(f"weights initialised from {args.init_model}")
        if args.imagenet_mat and not resuming:
            from gpq_keras.convert import load_imagenet_mat

            load_imagenet_mat(model, args.imagenet_mat)
            print(f"backbone initialised from {args.imagenet_mat}")
        model.compile(jit_compile=_jit_compile(args.jit_compile))
    record = record or new_record(["gpq"] + args.argv, settings)
    record.update(
        jit_compile=bool(model.jit_compile), strategy=type(strategy).__name__, replicas=replicas
    )
    if num_workers(strategy) > 1:
        record["task"] = (
            f"{strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id}"
        )
    print(
        f"GPQ {config.bits} bits (M={config.num_subspaces}, K={config.num_codewords}, "
        f"d={config.subspace_dim}) on {split.name}: {len(split.x_labeled)} labeled, "
        f"{len(split.x_unlabeled)} unlabeled, {0 if x_val is None else len(x_val)} validation images; "
        f"{args.precision}, XLA {'on' if model.jit_compile else 'off'}"
        + (
            f"; {replicas} replicas, sync batch norm {'on' if config.sync_batch_norm else 'off'}"
            if replicas > 1
            else ""
        )
        + ("; resuming from the backup in " + run.backup if resuming else "")
    )
    try:  # outside the strategy's scope: fit_run restores the backup on the chief alone
        record = fit_run(
            model,
            split,
            run,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            validation=None if x_val is None else (x_val, y_val),
            eval_every=args.eval_every,
            backup_every_steps=args.backup_every_steps,
            save_every=args.save_every,
            keep_checkpoints=args.keep_checkpoints,
            record=record,
            pipeline=args.pipeline,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except KeyboardInterrupt:
        record = run.read_record() or record
        record["status"] = "interrupted"
        run.write_record(record)
        raise Interrupted(
            f"interrupted; rerun the same command to resume from the last backup in {run.backup}"
        )
    best = (record.get("validation") or {}).get("best")
    if best:
        print(f"best val_mAP {best['val_mAP']:.4f} at epoch {best['epoch']}: {run.best}")
    print(f"saved {run.model}")


def cmd_evaluate(args):
    import numpy as np

    from gpq_keras import metrics
    from gpq_keras.retrieval import PQIndex

    model, split, chief = _load_model_and_data(args)
    if args.query is not None and not 0 <= args.query < len(split.x_query):
        raise CLIError(f"--query {args.query} is out of range (0..{len(split.x_query) - 1})")
    top_k = args.top_k or len(split.x_db)
    if top_k > len(split.x_db):
        raise CLIError(f"--top-k {top_k} exceeds the {len(split.x_db)} database items")
    index = PQIndex.from_model(model, mode=args.mode).add(_features(model, split.x_db, "database"))
    queries = _features(model, split.x_query, "query")
    result = metrics.evaluate_ranking(
        index.rank(queries, top_k, with_distances=False), split.y_query, split.y_db
    )
    print(f"mAP: {result['mAP']:.4f}")
    for k, value in sorted(result["precision"].items()):
        print(f"precision@{k}: {value:.4f}")
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
    }
    if not chief:
        for path in filter(None, (args.json, args.figure)):
            _not_chief(path)
        return
    if args.json:
        from gpq_keras.files import write_json

        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.figure:
        from gpq_keras import viz

        if args.query is None:  # a good, a median and a bad query by AP, not only successes
            picks = viz.pick_queries_by_ap(result["ap"])
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
                    query_image=split.x_query[query],
                    result_images=split.x_db[ids[0]],
                    relevant=relevant,
                    classes=class_of(split.y_db[ids[0]]),
                    distances=distances[0],
                    query_class=None if query_class is None else query_class[0],
                    title=("" if what == "query" else f"{what}\n")
                    + f"query {query}\nAP {result['ap'][query]:.2f}",
                )
            )
        viz.plot_ranked_lists(blocks, args.figure)
        print(
            f"wrote {args.figure}: "
            + ", ".join(f"{what} query {q} (AP {result['ap'][q]:.4f})" for what, q in picks.items())
        )


def cmd_encode(args):
    import numpy as np

    from gpq_keras.retrieval import ProductQuantizer

    model, split, chief = _load_model_and_data(args)
    features = _features(model, split.x_db, "database")
    mode = args.mode or model.gpq_config.retrieval_mode
    codes = ProductQuantizer.from_model(model, mode).encode(features)
    if not chief:
        return _not_chief(args.output)
    _write_npz_atomic(args.output, features=features, codes=codes, labels=np.asarray(split.y_db))
    print(f"wrote {args.output}: {len(codes)} codes of {model.gpq_config.bits} bits ({mode} mode)")


def cmd_convert(args):
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


def cmd_index_build(args):
    from gpq_keras.retrieval import PQIndex

    if args.images:  # image files: every one indexed, with its path (and class from its sub-folder)
        from gpq_keras.data.user import list_images

        model, chief = _load_model(args)
        paths, labels, class_names = list_images(args.images)
        index = PQIndex.from_model(model, mode=args.mode, class_names=class_names)
        _add_files(index, model, paths, labels)
    else:
        model, split, chief = _load_model_and_data(args)
        index = PQIndex.from_model(model, mode=args.mode)
        index.add(_features(model, split.x_db, "database"), labels=split.y_db)
    if not chief:
        return _not_chief(args.output)
    if args.faiss:
        from gpq_keras.files import atomic_path
        from gpq_keras.retrieval import import_faiss

        faiss = import_faiss()
        try:
            built = index.to_faiss(fast_scan=args.fast_scan, nlist=args.nlist, nprobe=args.nprobe)
        except ValueError as exc:
            raise CLIError(f"--faiss: {exc}") from None
        with atomic_path(args.output) as tmp:
            faiss.write_index(built, tmp)
    elif args.fast_scan or args.nlist:
        raise CLIError("--fast-scan and --nlist build faiss indexes: add --faiss")
    else:
        index.save(args.output)
    print(
        f"wrote {args.output}: {index.ntotal} items, {model.gpq_config.bits} bits ({index.mode} mode)"
    )


def cmd_index_add(args):
    import numpy as np

    from gpq_keras.data.user import list_images
    from gpq_keras.retrieval import PQIndex

    index = PQIndex.load(args.index)
    model, chief = _load_model(args)
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
        return _not_chief(args.index)
    index.save(args.index)  # replaced atomically
    print(f"wrote {args.index}: {index.ntotal} items ({index.ntotal - before} added)")


def cmd_search(args):
    from gpq_keras.files import write_json

    model, chief = _load_model(args)
    index = _index_for(model, args.index, _open_index(args.index))
    k = min(args.k, index.ntotal)
    if k < args.k:
        print(f"-k {args.k} capped at the {index.ntotal} items of {args.index}", file=sys.stderr)
    queries = _decode_files(model, args.image)
    distances, ids = index.search(model.encode(queries), k)
    sources = index.sources_for(ids) if index.sources is not None else None
    int_labels = index.labels is not None and index.labels.ndim == 1
    classes = index.class_names_for(ids) if index.class_names and int_labels else None
    report = []
    for q, path in enumerate(args.image):
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
    if not chief:
        for path in filter(None, (args.json, args.figure)):
            _not_chief(path)
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
        from gpq_keras import viz

        shown = report[0]["results"][: viz.MAX_RESULTS]
        if sources is None:
            raise CLIError(f"{args.index} holds no file names to show in --figure")
        images = _decode_files(model, [hit["source"] for hit in shown])
        captions = [
            os.path.basename(hit["source"]) + (f" ({hit['class']})" if "class" in hit else "")
            for hit in shown
        ]
        viz.plot_ranked_list(
            queries[0],
            images,
            path=args.figure,
            captions=captions,
            title=f"{os.path.basename(args.image[0])}: top {len(shown)} of {index.ntotal}",
        )
        print(f"wrote {args.figure}")


def cmd_export(args):
    from gpq_keras.export import export_saved_model

    model, chief = _load_model(args)
    if not chief:
        return _not_chief(args.output)
    export_saved_model(model, args.output, mode=args.mode)
    print(
        f"wrote {args.output}: a SavedModel, serving_default(images uint8 [N, "
        f"{', '.join(map(str, model.gpq_config.image_shape))}]) -> features, codes"
    )


def cmd_index_search(args):
    def check_k(index):
        if args.k > index.ntotal:
            raise CLIError(f"-k {args.k} exceeds the {index.ntotal} items in {args.index}")

    index = _open_index(args.index)
    if index is not None:  # before any model is loaded
        check_k(index)
    model, split, chief = _load_model_and_data(args)
    index = _index_for(model, args.index, index, args.mode)
    check_k(index)  # a faiss file: once opened with the model
    queries = _features(model, split.x_query, "query")
    if args.nprobe is not None and not getattr(index, "inverted", False):
        raise CLIError(
            f"--nprobe: {args.index} is not an inverted-file faiss index (index build --faiss --nlist)"
        )
    if isinstance(index, _FaissIndex):
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
        _not_chief(args.output)
    elif args.output:
        _write_npz_atomic(args.output, distances=distances, ids=ids)
        print(f"wrote {args.output}: top {args.k} of {len(ids)} queries")
    for q in range(min(len(ids), args.show)):
        print(f"query {q}: " + " ".join(f"{i}({d:.3f})" for i, d in zip(ids[q], distances[q])))


# --- parser ---------------------------------------------------------------------------------------


def _int_at_least(minimum):
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


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: `gpq train: error: ... (see gpq train --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command(sub, name, help_text, example, func):
    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _model_and_data(parser, model_help="a GPQ .keras file"):
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--data", required=True, help=DATA_HELP)
    _strategy_flag(parser, "encode")


def _strategy_flag(parser, what):
    from gpq_keras.config import STRATEGIES

    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help=f"{what} with tf.distribute: one device, mirrored (this machine's GPUs), multi-worker "
        "(the machines of TF_CONFIG; only the chief writes); auto = mirrored when more than "
        "one GPU is visible (auto)",
    )


def _add_train(sub):
    p = _command(
        sub,
        "train",
        "train GPQ with model.fit on a data set's labeled and unlabeled images; rerun the "
        "same command to resume an interrupted run",
        "gpq train --data cifar10:cifar10 --output runs/cifar48 --bits 48 --epochs 300 "
        "--imagenet-mat checkpoints/original/ImageNet_pretrained.mat",
        cmd_train,
    )
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument(
        "--output",
        required=True,
        help="run folder: model.keras, best.keras, log.csv, logs/ (TensorBoard), run.json, checkpoints/",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=300,
        help="epochs of len(labeled) // batch-size steps (300)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=500,
        help="images per stream and step: the global batch, split over the replicas (500)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--bits", type=int, choices=(12, 24, 32, 48), help="code length with K=16 (default 48)"
    )
    size.add_argument(
        "--n-book",
        type=_positive_int,
        dest="num_subspaces",
        help="M, number of codebooks (sets GPQConfig.num_subspaces; instead of --bits)",
    )
    p.add_argument(
        "--n-word",
        type=_positive_int,
        dest="num_codewords",
        help="K, codewords per codebook, a power of two (sets GPQConfig.num_codewords)",
    )
    p.add_argument(
        "--filters", help="widths of the four VGG stages, e.g. 16,32,64,64 (64,128,256,512)"
    )
    p.add_argument("--learning-rate", type=float, help="initial Adam learning rate (2e-4)")
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
    p.add_argument("--seed", type=int, default=0, help="weights, data order and augmentation (0)")
    p.add_argument(
        "--pipeline",
        choices=("auto", "tf.data", "numpy"),
        default="auto",
        help="training input: tf.data, or NumPy (a keras.utils.PyDataset, the same augmentation drawn "
        "from NumPy's generator); auto = tf.data when TensorFlow is installed (auto)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow's op determinism: the same seed gives the same model on the same machine "
        "(some GPU ops get slower; JAX on CPU is deterministic without it)",
    )
    run = p.add_argument_group("long runs")
    start = run.add_mutually_exclusive_group()
    start.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --output"
    )
    start.add_argument(
        "--restart",
        action="store_true",
        help="throw away an interrupted run's backup and start over",
    )
    run.add_argument(
        "--backup-every-steps",
        type=_positive_int,
        help="back the training state up every N steps too (default: every epoch only)",
    )
    run.add_argument(
        "--save-every",
        type=_non_negative_int,
        default=0,
        help="also save checkpoints/epoch_NNN.keras every N epochs (0: never)",
    )
    run.add_argument(
        "--keep-checkpoints", type=_positive_int, default=3, help="periodic checkpoints kept (3)"
    )
    run.add_argument(
        "--val-per-class",
        type=_non_negative_int,
        help="labeled images per class held out for validation (default: a tenth of the smallest "
        "class; 0: none)",
    )
    run.add_argument(
        "--eval-every",
        type=_positive_int,
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
    scale = p.add_argument_group(
        "training at scale (--batch-size is the global batch of all replicas)"
    )
    _strategy_flag(scale, "train")
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


def _add_evaluate(sub):
    p = _command(
        sub,
        "evaluate",
        "mAP (the paper's protocol) of a model on a data set's queries and database",
        "gpq evaluate --model runs/demo/model.keras --data digits --json eval.json --figure ranked.png",
        cmd_evaluate,
    )
    _model_and_data(p)
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook at retrieval (model's default)"
    )
    p.add_argument(
        "--top-k", type=_positive_int, help="mAP over the top K (default: the whole database)"
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--figure",
        help="write ranked lists (top 15) to this PNG: the best, the median and the "
        "worst query by AP, or --query",
    )
    p.add_argument("--query", type=_non_negative_int, help="the one query the figure shows")


def _add_encode(sub):
    p = _command(
        sub,
        "encode",
        "encode a data set's database into PQ codes",
        "gpq encode --model runs/demo/model.keras --data digits --output codes.npz",
        cmd_encode,
    )
    _model_and_data(p)
    p.add_argument("--output", required=True, help=".npz with features, codes (uint8) and labels")
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook for the codes (model's default)"
    )


def _add_convert(sub):
    p = _command(
        sub,
        "convert",
        "convert the original TF1 checkpoint into a Keras model",
        "gpq convert --checkpoint checkpoints/original/48bits_example.ckpt "
        "--output checkpoints/converted/gpq_cifar10_48bit.keras",
        cmd_convert,
    )
    p.add_argument("--checkpoint", required=True, help="TF1 checkpoint prefix (without .index)")
    p.add_argument("--output", required=True, help="the .keras file to write")
    p.add_argument(
        "--config",
        help='JSON object of GPQConfig fields to set, e.g. {"image_shape": [32, 32, 3]}; '
        "the rest is inferred from the checkpoint",
    )


def _add_index(sub):
    p = _command(
        sub,
        "index",
        "build or search a saved PQ index",
        "gpq index build --model runs/demo/model.keras --data digits --output runs/demo/index.npz",
        None,
    )
    index_sub = p.add_subparsers(dest="index_command", required=True)
    b = _command(
        index_sub,
        "build",
        "encode a data set's database, or image files, into a saved index",
        "gpq index build --model runs/photos/model.keras --images photos/ --output photos.npz",
        cmd_index_build,
    )
    b.add_argument("--model", required=True, help="a GPQ .keras file")
    source = b.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=DATA_HELP + " (its database part)")
    source.add_argument("--images", help=IMAGES_HELP)
    _strategy_flag(b, "encode")
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
        type=_positive_int,
        help="with --faiss: an inverted file (IndexIVFPQFastScan, K=16) of NLIST lists, for millions",
    )
    b.add_argument(
        "--nprobe",
        type=_positive_int,
        default=1,
        help="with --nlist: lists searched by default (1)",
    )
    a = _command(
        index_sub,
        "add",
        "encode image files and append them to a saved index of files",
        "gpq index add --model runs/photos/model.keras --index photos.npz --images new_photos/",
        cmd_index_add,
    )
    a.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    a.add_argument("--index", required=True, help="a PQIndex .npz of files; replaced atomically")
    a.add_argument("--images", required=True, help=IMAGES_HELP)
    _strategy_flag(a, "encode")
    s = _command(
        index_sub,
        "search",
        "search a saved PQIndex with a data set's queries",
        "gpq index search --model runs/demo/model.keras --index runs/demo/index.npz --data digits -k 10",
        cmd_index_search,
    )
    _model_and_data(s, "the GPQ .keras file that built the index")
    s.add_argument(
        "--index", required=True, help="a PQIndex .npz, or the faiss file of `index build --faiss`"
    )
    s.add_argument(
        "--mode",
        choices=RETRIEVAL_MODES,
        help="for a faiss file: the mode it was built in (model's default)",
    )
    s.add_argument("-k", type=_positive_int, default=10, help="results per query (10)")
    s.add_argument(
        "--nprobe", type=_positive_int, help="for an inverted-file faiss index: lists to search"
    )
    s.add_argument(
        "--approximate",
        action="store_true",
        help="for a PQIndex with K=16 and faiss: fast-scan results as they are, not re-ranked exactly",
    )
    s.add_argument("--output", help="write distances and ids to this .npz")
    s.add_argument(
        "--show",
        type=_non_negative_int,
        default=3,
        help="print the results of the first N queries (3)",
    )


def _add_search(sub):
    p = _command(
        sub,
        "search",
        "the most similar indexed images to one or more image files",
        "gpq search --model runs/photos/model.keras --index photos.npz --image query.jpg -k 10",
        cmd_search,
    )
    p.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    p.add_argument("--index", required=True, help="a PQIndex .npz (of files: results name them)")
    p.add_argument(
        "--image", required=True, action="append", help="a query image file (repeat for more)"
    )
    p.add_argument(
        "-k",
        type=_positive_int,
        default=10,
        help="results per query, capped at the index size (10)",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--figure", help="write the first query and its top 15 results to this PNG")
    _strategy_flag(p, "encode")


def _add_export(sub):
    p = _command(
        sub,
        "export",
        "write a TensorFlow SavedModel to serve: uint8 images in, features and codes out",
        "gpq export --model runs/photos/model.keras --output served/gpq/1",
        cmd_export,
    )
    p.add_argument("--model", required=True, help="a GPQ .keras file")
    p.add_argument(
        "--output", required=True, help="the SavedModel folder to create (must not exist)"
    )
    p.add_argument(
        "--mode", choices=RETRIEVAL_MODES, help="codebook of the codes (model's default)"
    )
    _strategy_flag(p, "load")


def build_parser():
    parser = _Parser(
        prog="gpq",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="GPQ (Generalized Product Quantization network): train, convert, encode, index, evaluate.",
        epilog=textwrap.dedent("""\
            example:
              gpq train --data digits --output runs/demo --epochs 40
              gpq evaluate --model runs/demo/model.keras --data digits"""),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_evaluate,
        _add_encode,
        _add_convert,
        _add_index,
        _add_search,
        _add_export,
    ):
        add(sub)
    return parser


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


def _check_paths(args):
    """Refuse, before any work, an output that is (through links) one of the inputs or another output,
    and a training run folder that would write over an input."""
    from gpq_keras.data import spec_paths

    def real(path):
        return os.path.realpath(os.path.expanduser(path))

    inputs = [(flag, getattr(args, attr)) for flag, attr in _INPUTS if getattr(args, attr, None)]
    if getattr(args, "data", None):
        inputs += [("--data", path) for path in spec_paths(args.data)]
    inputs += [("--image", path) for path in getattr(args, "image", None) or []]
    if getattr(args, "checkpoint", None):  # a TF1 checkpoint is a prefix of several files
        inputs += [("--checkpoint", args.checkpoint + suffix) for suffix in (".index", ".meta")]
    outputs = [(flag, getattr(args, attr)) for flag, attr in _OUTPUTS if getattr(args, attr, None)]
    if args.command == "train":
        from gpq_keras.training import RunDirectory

        run = RunDirectory(args.output)
        outputs = [
            ("--output", path)
            for path in (
                run.path,
                run.model,
                run.best,
                run.log,
                run.record,
                run.logs,
                run.checkpoints,
                run.backup,
            )
        ]
    seen = {}
    for flag, path in outputs:
        for in_flag, in_path in inputs:
            if real(path) == real(in_path):
                raise CLIError(
                    f"{flag} {path} is the input {in_flag} {in_path}; refusing to overwrite an input"
                )
        if real(path) in seen and seen[real(path)] != flag:
            raise CLIError(f"{flag} and {seen[real(path)]} are the same file ({path})")
        seen.setdefault(real(path), flag)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _quiet_tensorflow()
    try:
        _check_paths(args)
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


if __name__ == "__main__":
    sys.exit(main())
