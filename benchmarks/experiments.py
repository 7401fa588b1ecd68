"""GPQ's claims measured: ablation, baselines, scarce labels, code length, unseen classes and GPQ on
ready embeddings, over several seeds.

    .venv/bin/python benchmarks/experiments.py [--quick] [--data digits] [--seeds 0,1,2]
        [--steps 200] [--groups ablation,baselines,labels,bits,unseen,embeddings]
        [--labels 5,10,25,50] [--bits 12,24,32,48] [--filters 16,32,64,64] [--batch-size 100]
        [--out benchmarks/results]

Every run trains from scratch on `--data` (default: the embedded digits, split as `make demo` splits
them: 180 queries, 50 labeled images per class, 1,117 unlabeled images that are also the database)
for `--steps` steps (batch `--batch-size` labeled + as many unlabeled images, capped at the labeled
set's size), seeded (weights, data order, augmentation; TensorFlow's op determinism on), and is
scored by mAP over the whole database (the paper's metric, `consistent` mode) and precision@10.
Groups:

- `ablation` (48 bits, 50 labels per class): GPQ; no entropy loss (lambda1 = 0: the unlabeled images
  are unused); no classification loss (lambda2 = 0); N-pair PQ only (both 0).
- `baselines`: two-step (the same backbone trained with a softmax classifier on the labeled images
  only, then faiss' `ProductQuantizer` or OPQ + PQ trained on its database features, searched by
  asymmetric distance) and PQ on raw pixels, the floor.
- `labels`: labeled images per class in `--labels` (the first of each class; the unlabeled images
  and the database stay the same): GPQ, no entropy, two-step PQ and pixel PQ.
- `bits`: code lengths in `--bits` (K = 16 codewords, M = bits / 4 codebooks): GPQ and two-step PQ.
- `unseen` (48 bits; Sablayrolles et al. 2017, `load_data(data, protocol="unseen", seed=seed)`):
  a permutation of the classes drawn from the seed puts 75% of them (8 of 10) in training, with
  their labeled images; queries and database are the other classes' images (the database is also
  the unlabeled set). GPQ, no entropy and two-step PQ (faiss trained on the database searched),
  each scored unseen@unseen (the unseen queries among the unseen database) and unseen@all (among
  the database of every class). The class split changes with the seed.
- `embeddings` (48 bits; labels per class: the `--labels` among 5, 10 and 50, so all three by
  default and 5 and 50 with `--quick`): GPQ's head on ready embeddings, `GPQ(config,
  backbone="mlp")` (learning rate 1e-2; an MLP D -> 512 -> M * d, then the quantiser), against
  faiss PQ and OPQ + PQ trained on the database vectors, all on the same vectors: the image runs'
  queries, labeled subset and database, each image replaced by a float vector (`embed`: for the
  embedded digits their own 8x8 pixels / 255, 64-d, of which the 32x32x3 images are the
  enlargement; other data: the flattened pixels / 255). faiss pads the vectors with zeros to a
  multiple of M (64 -> 72 at M = 12: every dimension kept, distances unchanged).

Runs shared between groups are trained once. Writes to `--out`: `<group>.json` (every run: method,
labels per class, bits, seed, mAP, precision@10, seconds; unseen: those of unseen@unseen, the
unseen@all ones and the unseen classes; with the command, versions and budget), `results.md` (mean
+- std over seeds, a table for every group's JSON in `--out`, this command's and earlier ones) and
`labels.png` (mAP against labels per class, one line per method); `--report-only` rewrites those
two from the JSON files. `--quick` (one seed, 8 steps, 5 and
50 labels, 12 and 48 bits) checks the whole pipeline in a few minutes; its figures mean nothing.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

GROUPS = ("ablation", "baselines", "labels", "bits", "unseen", "embeddings")
GPQ_METHODS = {  # name -> (lambda1, lambda2)
    "GPQ": (0.1, 0.1),
    "GPQ, no entropy (lambda1=0)": (0.0, 0.1),
    "GPQ, no classification (lambda2=0)": (0.1, 0.0),
    "N-pair PQ only": (0.0, 0.0),
}
TWO_STEP = {"two-step: classifier + PQ": "pq", "two-step: classifier + OPQ": "opq"}
PIXELS = "PQ on raw pixels"
UNSEEN_METHODS = ("GPQ", "GPQ, no entropy (lambda1=0)", "two-step: classifier + PQ")
UNSEEN_ALL = ("unseen@all mAP", "unseen@all precision@10")  # an unseen row's figures besides
DEFAULT_LABELS, DEFAULT_BITS = 50, 48
EMBEDDINGS = {  # name -> what is trained on the vectors: GPQ's MLP head, or faiss PQ / OPQ + PQ
    "GPQ on embeddings (mlp)": "gpq",
    "PQ on the embeddings": "pq",
    "OPQ on the embeddings": "opq",
}
EMBEDDING_LABELS = (5, 10, 50)  # the group `embeddings` runs at the `--labels` among these
EMBEDDING_LEARNING_RATE = 1e-2  # an MLP head, not a VGG: tests/test_embeddings_vs_pq.py's


def plan(groups, labels, bits):
    """The (method, labels per class, bits) settings the groups need -> {group: [settings]}."""
    out = {}
    if "ablation" in groups:
        out["ablation"] = [(m, DEFAULT_LABELS, DEFAULT_BITS) for m in GPQ_METHODS]
    if "baselines" in groups:
        out["baselines"] = [(m, DEFAULT_LABELS, DEFAULT_BITS) for m in ("GPQ", *TWO_STEP, PIXELS)]
    if "labels" in groups:
        out["labels"] = [
            (m, n, DEFAULT_BITS)
            for n in labels
            for m in ("GPQ", "GPQ, no entropy (lambda1=0)", "two-step: classifier + PQ", PIXELS)
        ]
    if "bits" in groups:
        out["bits"] = [
            (m, DEFAULT_LABELS, b) for b in bits for m in ("GPQ", "two-step: classifier + PQ")
        ]
    if "unseen" in groups:
        out["unseen"] = [(m, DEFAULT_LABELS, DEFAULT_BITS) for m in UNSEEN_METHODS]
    if "embeddings" in groups:
        out["embeddings"] = [
            (m, n, DEFAULT_BITS) for n in embedding_labels(labels) for m in EMBEDDINGS
        ]
    return out


def embedding_labels(labels):
    """The labels per class of the group `embeddings`: those of `labels` in `EMBEDDING_LABELS`,
    in `labels`' order."""
    return [n for n in labels if n in EMBEDDING_LABELS]


class Runner:
    """Trains and scores settings, each (method, labels, bits, seed) once; the classifier of the
    two-step baselines is trained once per (labels, bits, seed) and shared by PQ and OPQ."""

    def __init__(self, args):
        import keras
        import tensorflow as tf

        from gpq_keras.data import load_data

        tf.config.experimental.enable_op_determinism()
        self.keras, self.args = keras, args
        self.load_data = load_data
        self.splits, self.results, self.features = {}, {}, {}

    def split(self, labels, protocol=None, seed=None):
        """The data with the first `labels` labeled images of each class kept; queries, unlabeled
        images and database unchanged, so every label budget is scored on the same database.
        `protocol` "unseen": the unseen split of `seed` (its classes depend on it)."""
        key = (protocol, seed if protocol else None)
        if key + (labels,) not in self.splits:
            import dataclasses

            if key not in self.splits:
                self.splits[key] = self.load_data(self.args.data, protocol=protocol, seed=seed or 0)
            full = self.splits[key]
            y = full.y_labeled
            rank = np.empty(len(y), np.int64)
            for c in np.unique(y):
                rank[y == c] = np.arange(np.sum(y == c))
            fewest = np.bincount(y)[np.unique(y)].min()  # among the classes it has (unseen: seen)
            if fewest < labels:
                raise SystemExit(
                    f"--labels {labels}: {self.args.data} has only {fewest} labeled images in "
                    "some class"
                )
            keep = rank < labels
            index = dict(full.index)
            if "labeled" in index:  # the positions of the labeled images kept
                index["labeled"] = index["labeled"][keep]
            self.splits[key + (labels,)] = dataclasses.replace(
                full, x_labeled=full.x_labeled[keep], y_labeled=y[keep], index=index
            )
        return self.splits[key + (labels,)]

    def vectors(self, labels):
        """`split(labels)` with every image replaced by its vector (`embed`)."""
        key = ("vectors", labels)
        if key not in self.splits:
            self.splits[key] = embed(self.split(labels), self.args.data)
        return self.splits[key]

    def part_sizes(self, protocol, seeds):
        """{seed: images per part} of the splits of `protocol` (labeled, query, database and
        database_all, the database of every class)."""
        out = {}
        for seed in seeds:
            split = self.splits[(protocol, seed)]
            sizes = split.part_sizes()
            out[str(seed)] = {k: sizes[k] for k in ("labeled", "query", "database")}
            out[str(seed)]["database_all"] = len(split.x_db_all)
        return out

    def config(self, split, bits, lambda1=0.1, lambda2=0.1):
        """The GPQConfig of `bits` for `split`: the narrow VGG's for images; for vectors
        (`takes_vectors`) input_dim D and `EMBEDDING_LEARNING_RATE`."""
        from gpq_keras.config import GPQConfig

        if split.takes_vectors:
            return GPQConfig.from_bits(
                bits,
                num_classes=split.num_classes,
                input_dim=split.x_query.shape[1],
                lambda1=lambda1,
                lambda2=lambda2,
                learning_rate=EMBEDDING_LEARNING_RATE,
            )
        return GPQConfig.from_bits(
            bits,
            num_classes=split.num_classes,
            image_shape=tuple(split.x_query.shape[1:]),
            filters=self.args.filters,
            lambda1=lambda1,
            lambda2=lambda2,
        )

    def run(self, method, labels, bits, seed, protocol=None):
        """One setting's row: mAP and precision@10 (unseen: unseen@unseen, and `UNSEEN_ALL`)."""
        key = (method, labels, bits, seed, protocol)
        if key not in self.results:
            start = time.perf_counter()
            split = self.split(labels, protocol, seed)
            if method in GPQ_METHODS:
                score = self._gpq(split, bits, seed, *GPQ_METHODS[method])
            elif method in TWO_STEP:
                score = self._two_step(split, labels, bits, seed, TWO_STEP[method], protocol)
            elif EMBEDDINGS.get(method) == "gpq":
                score = self._gpq(self.vectors(labels), bits, seed, *GPQ_METHODS["GPQ"])
            elif method in EMBEDDINGS:
                vectors = self.vectors(labels)
                score = _faiss_score(
                    vectors.x_db,
                    vectors.x_query,
                    vectors.y_query,
                    vectors.y_db,
                    bits,
                    EMBEDDINGS[method],
                )
            else:
                score = _faiss_score(
                    _pixels(split.x_db), _pixels(split.x_query), split.y_query, split.y_db, bits
                )
            score.update(
                method=method,
                labels_per_class=labels,
                bits=bits,
                seed=seed,
                seconds=round(time.perf_counter() - start, 1),
            )
            if protocol:
                score.update(protocol=protocol, unseen_classes=list(split.unseen_classes))
            self.results[key] = score
            also = f" unseen@all mAP {score[UNSEEN_ALL[0]]:.4f}" if protocol else ""
            print(
                f"  {method:<36} labels {labels:>3}/class {bits:>2} bits seed {seed}: "
                f"mAP {score['mAP']:.4f} "
                f"P@10 {score['precision@10']:.4f}{also} ({score['seconds']:.0f} s)",
                flush=True,
            )
        return self.results[key]

    def _dataset(self, split, seed):
        from gpq_keras.data import train_dataset

        return train_dataset(split, batch_size=self.args.batch_size, seed=seed)[0]

    def _gpq(self, split, bits, seed, lambda1, lambda2):
        """GPQ trained on `split` and scored: the narrow VGG on images, the MLP head on vectors."""
        from gpq_keras import GPQ, metrics
        from gpq_keras.retrieval import PQIndex

        self.keras.utils.set_random_seed(seed)
        backbone = "mlp" if split.takes_vectors else None  # None: the config's VGG
        model = GPQ(self.config(split, bits, lambda1, lambda2), backbone=backbone)
        model.compile()
        model.fit(
            self._dataset(split, seed),
            steps_per_epoch=self.args.steps,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
        queries = model.encode(split.x_query)
        databases = [split.x_db] + ([] if split.x_db_all is None else [split.x_db_all])
        labels = [split.y_db] + ([] if split.y_db_all is None else [split.y_db_all])
        scores = []
        for x_db, y_db in zip(databases, labels):
            index = PQIndex.from_model(model).add(model.encode(x_db), labels=y_db)
            result = metrics.evaluate_ranking(
                index.rank(queries, with_distances=False), split.y_query, y_db, precision_at=(10,)
            )
            scores.append({"mAP": result["mAP"], "precision@10": result["precision"][10]})
        return _with_all(*scores)

    def _two_step(self, split, labels, bits, seed, kind, protocol=None):
        """Step 1: the GPQ backbone F and a softmax layer trained by cross-entropy on the labeled
        images (same steps, batch, augmentation and optimiser); step 2: faiss PQ / OPQ trained on
        F's features of the database searched (unseen: each of the two)."""
        key = (labels, bits, seed, protocol)
        if key not in self.features:
            from gpq_keras import GPQ

            keras = self.keras
            keras.utils.set_random_seed(seed)
            config = self.config(split, bits)
            features = GPQ(config)
            inputs = keras.Input(config.image_shape)
            classifier = keras.Model(
                inputs, keras.layers.Dense(split.num_classes)(features(inputs))
            )
            classifier.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            labeled = self._dataset(split, seed).map(lambda x, y: (x["labeled"], y))
            classifier.fit(
                labeled, steps_per_epoch=self.args.steps, epochs=1, verbose=0, shuffle=False
            )
            self.features[key] = (
                features.encode(split.x_db),
                features.encode(split.x_query),
                None if split.x_db_all is None else features.encode(split.x_db_all),
            )
        db, queries, db_all = self.features[key]
        score = _faiss_score(db, queries, split.y_query, split.y_db, bits, kind)
        if db_all is None:
            return score
        score_all = _faiss_score(db_all, queries, split.y_query, split.y_db_all, bits, kind)
        return _with_all(score, score_all)


def _with_all(score, score_all=None):
    """A row's figures: `score` (unseen: unseen@unseen) and, given, `score_all`'s as
    `UNSEEN_ALL`."""
    if score_all is not None:
        score.update(zip(UNSEEN_ALL, (score_all["mAP"], score_all["precision@10"])))
    return score


def _pixels(images):
    return (np.asarray(images, np.float32) / 255.0).reshape(len(images), -1)


def embed(split, data):
    """`split` with its images (N, H, W, C) as float32 vectors (N, D) -> a `Split` that
    `takes_vectors`, of the same rows and labels. `data` "digits": each image's own 8x8 pixels
    / 255 (D = 64; the split's 32x32x3 images are their enlargement, `digits.load_images`),
    found by the split's pool positions (`Split.index`); other data: the flattened pixels / 255
    (`_pixels`)."""
    from gpq_keras.data import digits
    from gpq_keras.data.split import Split

    if data == "digits":
        # (1797, 8, 8, 3): 0..255, three equal channels; one is kept
        small = digits.load_images(image_size=8)[0][..., 0]

        def vectors(x, part):
            return _pixels(small[split.index[part]])
    else:

        def vectors(x, part):
            return _pixels(x)

    db = vectors(split.x_db, "database")
    unlabeled = db if split.x_unlabeled is split.x_db else vectors(split.x_unlabeled, "unlabeled")
    return Split(
        vectors(split.x_query, "query"),
        split.y_query,
        db,
        split.y_db,
        x_labeled=vectors(split.x_labeled, "labeled"),
        y_labeled=split.y_labeled,
        x_unlabeled=unlabeled,
        num_classes=split.num_classes,
        name=f"{split.name} vectors",
    )


def _faiss_score(db, queries, y_query, y_db, bits, kind="pq"):
    """faiss PQ (or OPQ + PQ) of bits / 4 codebooks of 16 codewords trained on the database vectors;
    every query ranks the whole database by asymmetric (ADC) L2 distance
    -> {"mAP", "precision@10"}. Vectors whose width is not a multiple of M are padded with zeros
    to the next one (PQ needs d % M == 0): every dimension is kept, L2 distances unchanged."""
    from gpq_keras import metrics
    from gpq_keras.retrieval import import_faiss

    faiss = import_faiss()
    m = bits // 4
    dim = -(-db.shape[1] // m) * m

    def padded(x):
        x = np.asarray(x, np.float32)
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, dim - x.shape[1]))))

    db, queries = padded(db), padded(queries)
    index = faiss.IndexPQ(dim, m, 4)
    # fewer than 39 points per codeword (unseen's 221-image database) is only warned about, once
    # per codebook; the k-means is the same
    index.pq.cp.min_points_per_centroid = 1
    if kind == "opq":
        index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, m), index)
    index.train(db)
    index.add(db)
    _, ranking = index.search(queries, len(db))
    result = metrics.evaluate_ranking(ranking, y_query, y_db, precision_at=(10,))
    return {"mAP": result["mAP"], "precision@10": result["precision"][10]}


def summarise(rows, figures=("mAP", "precision@10")):
    """{(method, labels, bits): (mean, std of each of `figures`..., seeds)} over seeds: by
    default (mean mAP, std mAP, mean P@10, std P@10, seeds); std is the sample std (0 for one
    seed)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["labels_per_class"], row["bits"]), []).append(row)

    def std(a):
        return float(np.std(a, ddof=1)) if len(a) > 1 else 0.0

    out = {}
    for key, runs in groups.items():
        stats = []
        for figure in figures:
            values = np.array([r[figure] for r in runs])
            stats += [float(values.mean()), std(values)]
        out[key] = (*stats, len(runs))
    return out


def markdown(group, rows):
    """The group's table: one row per (method, labels, bits), mean +- std over seeds."""
    lines = [
        "| method | labels / class | bits | mAP | precision@10 | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (method, labels, bits), (m, s, p, ps, n) in summarise(rows).items():
        lines.append(
            f"| {method} | {labels} | {bits} | {m:.4f} +- {s:.4f} | {p:.4f} +- {ps:.4f} | {n} |"
        )
    return f"### {group}\n\n" + "\n".join(lines) + "\n"


def markdown_unseen(payload):
    """The unseen group's table: one row per (method, bits), unseen@unseen and unseen@all mAP and
    precision@10, mean +- std over seeds, with a caption saying how the classes were split."""
    rows = payload["runs"]
    lines = [
        "| method | bits | unseen@unseen mAP | unseen@all mAP | unseen@unseen precision@10 | "
        "unseen@all precision@10 | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    figures = ("mAP", UNSEEN_ALL[0], "precision@10", UNSEEN_ALL[1])
    for (method, _, bits), stats in summarise(rows, figures).items():
        cells = [f"{stats[i]:.4f} +- {stats[i + 1]:.4f}" for i in range(0, 8, 2)]
        lines.append(f"| {method} | {bits} | " + " | ".join(cells) + f" | {stats[-1]} |")
    classes = {}
    for row in rows:
        classes.setdefault(row["seed"], tuple(row["unseen_classes"]))
    parts = payload.get("split") or {}
    sizes = ""
    if parts:
        sizes = "; labeled / queries / unseen database / database of every class by seed: " + (
            ", ".join(
                f"{seed}: {p['labeled']} / {p['query']} / {p['database']} / {p['database_all']}"
                for seed, p in sorted(parts.items(), key=lambda kv: int(kv[0]))
            )
        )
    caption = (
        f"Unseen classes (Sablayrolles et al. 2017) on {payload['data']}: for each seed a "
        "permutation of the classes drawn from that seed puts 75% of them in training (their "
        "labeled images only); the queries and the database are the other classes' images, and "
        "that database is also the unlabeled set (GPQ sees it unlabeled, no entropy does not). "
        "unseen@unseen: the unseen queries among the unseen database; unseen@all: among the "
        "database of every class. The class split depends on the seed; unseen classes by seed: "
        + ", ".join(f"{seed}: {list(c)}" for seed, c in sorted(classes.items()))
        + f"{sizes}. {payload['steps']} steps of batch {payload['batch_size']}, "
        f"{DEFAULT_BITS} bits; two-step: faiss PQ trained on the features of the database "
        "searched."
    )
    return "### unseen\n\n" + caption + "\n\n" + "\n".join(lines) + "\n"


def markdown_embeddings(payload):
    """The embeddings group's table (`markdown`) with a caption saying what the vectors are and
    how each method was trained."""
    vectors = (
        "the 8x8 pixels of the digits / 255" if payload["data"] == "digits" else "pixels / 255"
    )
    caption = (
        "GPQ's head on ready embeddings: the image groups' queries, labeled images and database, "
        f"each image as a {payload.get('input_dim')}-d vector ({vectors}). "
        f'GPQ: `GPQ(config, backbone="mlp")` (MLP D -> 512 -> M * d), learning rate '
        f"{payload.get('learning_rate')}, {payload['steps']} steps of batch "
        f"{payload['batch_size']}; PQ and OPQ: faiss trained on the database vectors (padded "
        "with zeros to a multiple of M), unsupervised, so the same for every label budget and "
        "seed."
    )
    title, table = markdown("embeddings", payload["runs"]).split("\n\n", 1)
    return f"{title}\n\n{caption}\n\n{table}"


def plot_labels(rows, path):
    """mAP (mean, std as error bars) against labels per class, one line per method."""
    from matplotlib.figure import Figure

    from gpq_keras.files import atomic_path

    summary = summarise(rows)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for method in dict.fromkeys(key[0] for key in summary):
        points = sorted(
            (labels, mean, std)
            for (m, labels, _), (mean, std, *_) in summary.items()
            if m == method
        )
        x, y, err = (np.array(v) for v in zip(*points))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ticks = sorted({key[1] for key in summary})
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("labeled images per class")
    ax.set_ylabel("mAP (whole database)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _write_json(path, payload):
    from gpq_keras.files import atomic_path

    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, 8 steps, fewer settings (a smoke run)"
    )
    parser.add_argument(
        "--data", default="digits", help="a data spec (gpq --help); default the embedded digits"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--steps", type=int, default=200, help="training steps per run (200: `make demo`'s)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--filters", default="16,32,64,64", help="VGG widths (`make demo`'s narrow VGG)"
    )
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument(
        "--labels",
        default="5,10,25,50",
        help="labeled images per class (group `labels`; group `embeddings`: those among 5, 10, 50)",
    )
    parser.add_argument("--bits", default="12,24,32,48", help="code lengths (group `bits`)")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no training: rewrite results.md and labels.png from the JSON files in --out",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        print(report(args.out))
        return
    if args.quick:
        args.seeds, args.steps, args.labels, args.bits = "0", 8, "5,50", "12,48"
    seeds = [int(s) for s in args.seeds.split(",")]
    args.filters = tuple(int(v) for v in args.filters.split(","))
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--groups: unknown {unknown}; choose from {GROUPS}")
    labels = [int(v) for v in args.labels.split(",")]
    if "embeddings" in groups and not embedding_labels(labels):
        parser.error(f"--labels: group embeddings runs at those among {EMBEDDING_LABELS}; got none")
    settings = plan(groups, labels, [int(v) for v in args.bits.split(",")])
    os.makedirs(args.out, exist_ok=True)

    import faiss
    import keras
    import tensorflow as tf

    runner = Runner(args)
    began = time.perf_counter()
    meta = {
        "command": " ".join(
            ["python", "benchmarks/experiments.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "faiss": faiss.__version__,
        },
        "data": args.data,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "filters": list(args.filters),
        "seeds": seeds,
        "mode": "consistent",
        "metric": "mAP over the whole database; precision@10",
    }
    for group, wanted in settings.items():
        print(f"{group}:", flush=True)
        protocol = "unseen" if group == "unseen" else None
        rows = [
            runner.run(method, labels, bits, seed, protocol)
            for method, labels, bits in wanted
            for seed in seeds
        ]
        meta["minutes"] = round((time.perf_counter() - began) / 60, 1)  # so far
        payload = {**meta, "group": group, "runs": rows}
        if protocol:
            payload.update(protocol=protocol, split=runner.part_sizes(protocol, seeds))
        if group == "embeddings":
            vectors = runner.vectors(wanted[0][1])
            payload.update(
                input_dim=vectors.x_query.shape[1], learning_rate=EMBEDDING_LEARNING_RATE
            )
        _write_json(os.path.join(args.out, f"{group}.json"), payload)
    print(report(args.out))  # every group in --out, this command's and earlier ones


SETTINGS = ("data", "steps", "batch_size", "filters", "seeds", "mode")  # a group's, in its JSON


def report(out, groups=GROUPS):
    """Write results.md (a table per group found) and labels.png from the groups' JSON files in
    `out`. A group run by another command than the first group's says so under its title."""
    from gpq_keras.files import atomic_path

    tables, meta, minutes = [], None, {}
    for group in groups:
        path = os.path.join(out, f"{group}.json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            payload = json.load(fh)
        meta = meta or payload
        # each group's file holds its command's time so far: the longest of each command counts
        run = (payload["command"], payload["date"])
        minutes[run] = max(minutes.get(run, 0.0), payload.get("minutes", 0.0))
        if group == "unseen":
            table = markdown_unseen(payload)
        elif group == "embeddings":
            table = markdown_embeddings(payload)
        else:
            table = markdown(group, payload["runs"])
        if run != (meta["command"], meta["date"]):
            title, rest = table.split("\n\n", 1)
            other = [k for k in SETTINGS if payload.get(k) != meta.get(k)]
            table = (
                f"{title}\n\nRun by `{payload['command']}` ({payload['date']}, "
                f"{payload.get('minutes', 0.0):.0f} min)"
                + "".join(f", {k} {payload.get(k)}" for k in other)
                + f".\n\n{rest}"
            )
        tables.append(table)
        if group == "labels":
            plot_labels(payload["runs"], os.path.join(out, "labels.png"))
    if meta is None:
        raise SystemExit(f"no results in {out}: run benchmarks/experiments.py first")
    text = (
        f"Data {meta['data']}, {meta['steps']} steps of batch {meta['batch_size']} "
        f"(+ as many unlabeled), VGG widths {tuple(meta['filters'])}, seeds {meta['seeds']}, "
        f"`{meta['mode']}` mode; mean +- std over seeds. "
        f"{sum(minutes.values()):.0f} min in all on {meta['machine']} ({meta['date']}).\n"
        f"Command: `{meta['command']}`\n\n" + "\n".join(tables)
    )
    with atomic_path(os.path.join(out, "results.md"), suffix=".md") as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return text


if __name__ == "__main__":
    main()
