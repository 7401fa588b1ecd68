"""Retrieval speed: the original's loops against `gpq_keras.retrieval` / `metrics`, and faiss
IndexPQ.

    .venv/bin/python benchmarks/bench_retrieval.py [--queries 1000] [--database 54000]
        [--original-queries N] [--repeat 3] [--threads T]

On random data of the paper's size (1,000 queries, 54,000 items, M=12, K=16, d=12, 10 classes) it
times, in one run:

- the original's `PQ_retrieval` tail (`tests/original_retrieval.py`, the one restatement the tests
  use too): `pqDist` (Python loops over queries, sub-spaces and codewords), `np.argsort` of the
  (N, Q) distance matrix, `cat_apcal` (Python loops over queries and the whole ranked database,
  relevance read from a dense `np.matrix`);
- ours: `PQIndex.add` of the codes, `PQIndex.rank` and `metrics.evaluate_ranking` (mAP over the
  whole database);
- top-1000 search: `PQIndex.search` (fast-scan + exact re-rank, and NumPy) against faiss `IndexPQ`
  (inner product, the same codes) built by `PQIndex.to_faiss()`.

`--original-queries N` runs the original's loops on the first N queries only and scales its times to
all queries (the loops are linear in the queries); by default it runs them all. Prints a Markdown
table.

    .venv/bin/python benchmarks/bench_retrieval.py --compare-modes [--seeds 0,1,2] [--epochs 40]

instead trains small GPQ models (48 bits, VGG widths 16-32-64-128, batch 100) on the embedded digits
split and prints, per seed, the mAP over the database, mAP@100, precision@10 and @100 of the
`original` and `consistent` retrieval modes on the same trained model (several minutes per seed on
a CPU).
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

from gpq_keras import metrics, parallel
from gpq_keras.retrieval import PQIndex

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before `--compare-modes` imports TensorFlow
TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")

# --- the original's loops (tests/original_retrieval.py), as the original runs them ---------------


def run_original(z, m, codes, queries, query_labels, db_labels):
    """`pqDist` (float32, as the original), `np.argsort` of the (N, Q) distances, `cat_apcal`
    reading a dense `np.matrix` of relevance -> (times, mAP, AP per query)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import original_retrieval as original  # tests/original_retrieval.py

    times = {}
    similarity = np.asmatrix((query_labels[:, None] == db_labels[None, :]).astype(np.uint8))
    start = time.perf_counter()
    distances = original.pq_dist(
        z, m, codes, queries, dtype=np.float32
    ).T  # (N, Q), as the original
    times["distances"] = time.perf_counter() - start
    start = time.perf_counter()
    rank = np.argsort(distances, axis=0)
    times["ranking"] = time.perf_counter() - start
    start = time.perf_counter()
    mean_ap, ap = original.cat_apcal(similarity, rank, len(db_labels))
    times["ap"] = time.perf_counter() - start
    times["total"] = times["distances"] + times["ranking"] + times["ap"]
    return times, mean_ap, ap


def interleaved(rounds, **funcs):
    """Run each function once per round, in turn; -> {name: (best s, median s, last result)}."""
    times, results = {name: [] for name in funcs}, {}
    for _ in range(rounds):
        for name, func in funcs.items():
            start = time.perf_counter()
            results[name] = func()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), float(np.median(t)), results[name]) for name, t in times.items()}


def compare_modes(seeds, epochs, batch_size=100, filters=(16, 32, 64, 128)):
    """Train on digits per seed; print the retrieval quality of both modes on each trained model."""
    import keras

    from gpq_keras.config import GPQConfig
    from gpq_keras.data import load_data, train_dataset
    from gpq_keras.model import GPQ

    split = load_data("digits")
    print(
        f"# Retrieval modes on digits: {len(split.x_query)} queries, "
        f"{len(split.x_db)} database items, "
        f"{epochs} epochs x {max(1, len(split.x_labeled) // batch_size)} steps, filters {filters}"
    )
    print()
    print("| seed | mode | mAP (database) | mAP@100 | precision@10 | precision@100 |")
    print("|---|---|---:|---:|---:|---:|")
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = GPQ(GPQConfig(num_classes=split.num_classes, filters=tuple(filters)))
        model.compile()
        dataset, steps = train_dataset(split, batch_size=batch_size, seed=seed)
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0)
        db, queries = model.encode(split.x_db), model.encode(split.x_query)
        for mode in ("original", "consistent"):
            index = PQIndex.from_model(model, mode=mode).add(db, labels=split.y_db)
            full = metrics.evaluate_ranking(
                index.rank(queries, with_distances=False), split.y_query, split.y_db
            )
            top = metrics.evaluate_ranking(
                index.rank(queries, 100, with_distances=False), split.y_query, split.y_db
            )
            print(
                f"| {seed} | {mode} | {full['mAP']:.4f} | {top['mAP']:.4f} | "
                f"{full['precision'][10]:.4f} | "
                f"{full['precision'][100]:.4f} |",
                flush=True,
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=54000)
    parser.add_argument(
        "--original-queries",
        type=int,
        default=None,
        help="run the original's loops on this many queries and scale (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="ours and faiss: interleaved rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="ranking threads (default: all CPUs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-modes",
        action="store_true",
        help="train on digits and compare the retrieval modes instead of timing",
    )
    parser.add_argument("--seeds", default="0,1,2", help="--compare-modes: training seeds")
    parser.add_argument("--epochs", type=int, default=40, help="--compare-modes: training epochs")
    args = parser.parse_args(argv)
    if args.compare_modes:
        compare_modes([int(v) for v in args.seeds.split(",")], args.epochs)
        return
    m, k, d, classes = 12, 16, 12, 10
    rng = np.random.default_rng(args.seed)
    z = rng.standard_normal((k, m * d)).astype(np.float32)
    queries = rng.standard_normal((args.queries, m * d)).astype(np.float32)
    codes = rng.integers(0, k, (args.database, m)).astype(np.uint8)
    query_labels = rng.integers(0, classes, args.queries)
    db_labels = rng.integers(0, classes, args.database)
    parallel.set_num_threads(args.threads)

    from gpq_keras.retrieval import import_faiss

    faiss = import_faiss()
    print(
        f"# Retrieval benchmark: {args.queries} queries x {args.database} items, "
        f"M={m}, K={k}, d={d}"
    )
    print(
        f"numpy {np.__version__}, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), "
        f"{parallel.get_num_threads()} ranking threads, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); {args.repeat} interleaved rounds, "
        f"best / median"
    )
    print()

    def evaluate():  # the whole evaluation: index build, distances, ranking, AP
        index = PQIndex(z, m).add(codes, labels=db_labels)
        return metrics.evaluate_ranking(
            index.rank(queries, with_distances=False), query_labels, db_labels
        )

    index = PQIndex(z, m).add(codes, labels=db_labels)
    fx = index.to_faiss()
    top = min(1000, args.database)
    runs = interleaved(
        args.repeat,
        evaluate=evaluate,
        distances=lambda: [None for _ in index.rank(queries, 1, with_distances=False)],
        search=lambda: index.search(queries, top),
        search_numpy=lambda: index.search(queries, top, backend="numpy"),
        faiss=lambda: fx.search(queries, top),
    )
    result = runs["evaluate"][2]

    # The original's loops, on all queries or a prefix scaled up.
    n_orig = (
        args.queries if args.original_queries is None else min(args.original_queries, args.queries)
    )
    times, orig_map, orig_ap = run_original(
        z, m, codes, queries[:n_orig], query_labels[:n_orig], db_labels
    )
    scale = args.queries / n_orig
    times = {key: value * scale for key, value in times.items()}
    ap_diff = np.abs(result["ap"][:n_orig] - orig_ap).max()

    def fmt(name):
        return f"{runs[name][0]:.2f} s / {runs[name][1]:.2f} s"

    scaled = "" if n_orig == args.queries else f" (run on {n_orig} queries, scaled x{scale:g})"
    print(f"| step | original loops{scaled} | gpq_keras (best / median) | speed-up (best) |")
    print("|---|---:|---:|---:|")
    print(
        f"| asymmetric distances + top-1 (Q x N) | {times['distances']:.2f} s | "
        f"{fmt('distances')} | "
        f"{times['distances'] / runs['distances'][0]:.0f}x |"
    )
    print(f"| ranking (`np.argsort`) | {times['ranking']:.2f} s | (in the evaluation below) | |")
    print(
        f"| AP over the whole database (`cat_apcal`) | {times['ap']:.2f} s | "
        f"(in the evaluation below) | |"
    )
    print(
        f"| **whole mAP evaluation** | **{times['total']:.2f} s** | **{fmt('evaluate')}** | "
        f"**{times['total'] / runs['evaluate'][0]:.0f}x** |"
    )
    print()
    print(
        f"mAP: original {orig_map:.6f} on {n_orig} queries; "
        f"ours {result['ap'][:n_orig].mean():.6f} "
        f"(max per-query AP difference {ap_diff:.1e}); ours on all queries {result['mAP']:.6f}"
    )
    print()
    dist, ids = runs["search"][2]
    fdist, fids = runs["faiss"][2]
    print(f"| top-{top} search | best / median | queries/s (best) |")
    print("|---|---:|---:|")
    print(
        f"| faiss IndexPQ (inner product, same codes) | {fmt('faiss')} | "
        f"{args.queries / runs['faiss'][0]:.0f} |"
    )
    print(
        f"| gpq_keras PQIndex.search (fast-scan + exact re-rank) | {fmt('search')} | "
        f"{args.queries / runs['search'][0]:.0f} |"
    )
    print(
        f"| gpq_keras PQIndex.search(backend='numpy') | {fmt('search_numpy')} | "
        f"{args.queries / runs['search_numpy'][0]:.0f} |"
    )
    print()
    print(
        f"ours / faiss time (best): {runs['search'][0] / runs['faiss'][0]:.2f}; "
        f"same id at the same rank: "
        f"{float((fids == ids).mean()):.4%}; max |distance difference|: "
        f"{float(np.abs((m - fdist) - dist).max()):.1e} (float32 summation order)"
    )


if __name__ == "__main__":
    main()
