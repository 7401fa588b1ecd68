"""Retrieval speed: the original's loops against `gpq_keras.retrieval` / `metrics`, and faiss IndexPQ.

    .venv/bin/python benchmarks/bench_retrieval.py [--queries 1000] [--database 54000]
        [--original-queries N] [--repeat 3] [--threads T]

On random data of the paper's size (1,000 queries, 54,000 items, M=12, K=16, d=12, 10 classes) it times,
in one run:

- the original's `PQ_retrieval` tail, restated from `utils/RetrievalTest.py`: `pqDist` (Python loops over
  queries, sub-spaces and codewords), `np.argsort` of the (N, Q) distance matrix, `cat_apcal` (Python
  loops over queries and the whole ranked database, relevance read from a dense `np.matrix`);
- ours: `PQIndex.add` of the codes and `metrics.evaluate_index` (mAP over the whole database);
- top-1000 search: `PQIndex.search` against faiss `IndexPQ` (inner product, the same codes) built by
  `PQIndex.to_faiss()`.

`--original-queries N` runs the original's loops on the first N queries only and scales its times to
all queries (the loops are linear in the queries); by default it runs them all. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_retrieval.py --compare-modes [--seeds 0,1,2] [--epochs 40]

instead trains small GPQ models (48 bits, VGG widths 16-32-64-128, batch 100) on the embedded digits
split and prints, per seed, the mAP over the database, mAP@100, precision@10 and @100 of the `original`
and `consistent` retrieval modes on the same trained model (several minutes per seed on a CPU).
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from gpq_keras import metrics, retrieval  # noqa: E402
from gpq_keras.retrieval import PQIndex  # noqa: E402


# --- the original's algorithm (utils/RetrievalTest.py), restated --------------------------------------

def original_pq_dist(codebook, num_books, db_codes, queries):
    """The original's `pqDist` algorithm: per query, per sub-space, a Python loop over the codewords filling
    a distance table with np.dot, then the table gathered at the items' codes and summed -> (Q, N)."""
    words = codebook.shape[0]
    word_parts = np.split(codebook, num_books, axis=1)
    query_parts = np.split(queries, num_books, axis=1)
    code_columns = np.split(db_codes, num_books, axis=1)
    out = np.zeros((queries.shape[0], db_codes.shape[0]), dtype=np.float32)
    for qi in range(queries.shape[0]):
        total = None
        for book in range(num_books):
            table = np.zeros(words, dtype=np.float32)
            for word in range(words):
                table[word] = 1 - np.dot(query_parts[book][qi], word_parts[book][word])
            gathered = table[code_columns[book]]
            total = gathered if total is None else total + gathered
        out[qi] = np.squeeze(total)
    return out


def original_cat_apcal(relevant_matrix, ranks, depth):
    """The original's `cat_apcal` algorithm: Python loops over the queries (columns of `ranks`) and the top
    `depth` ranks, reading relevance from a dense matrix -> (mAP, AP per query)."""
    n_queries = ranks.shape[1]
    per_query = np.zeros(n_queries)
    for qi in range(n_queries):
        column = ranks[:, qi]
        found, summed = 0, 0.0
        for position in range(depth):
            if relevant_matrix[qi, column[position]] == 1:
                found += 1
                summed += found / (position + 1)
        per_query[qi] = summed / found if found else 0.0
    return np.mean(per_query), per_query


def run_original(z, m, codes, queries, query_labels, db_labels):
    times = {}
    label_similarity = np.asmatrix((query_labels[:, None] == db_labels[None, :]).astype(np.uint8))
    start = time.perf_counter()
    distances = original_pq_dist(z, m, codes.astype(int), queries).T  # (N, Q), as the original
    times["distances"] = time.perf_counter() - start
    start = time.perf_counter()
    rank = np.argsort(distances, axis=0)
    times["ranking"] = time.perf_counter() - start
    start = time.perf_counter()
    mean_ap, ap = original_cat_apcal(label_similarity, rank, len(db_labels))
    times["ap"] = time.perf_counter() - start
    times["total"] = times["distances"] + times["ranking"] + times["ap"]
    return times, mean_ap, ap


# --- ours -------------------------------------------------------------------------------------------

def best_of(repeat, func):
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare_modes(seeds, epochs, batch_size=100, filters=(16, 32, 64, 128)):
    """Train on digits per seed; print the retrieval quality of both modes on each trained model."""
    import keras

    from gpq_keras.config import GPQConfig
    from gpq_keras.data import load_data, train_dataset
    from gpq_keras.model import GPQ

    split = load_data("digits")
    print(f"# Retrieval modes on digits: {len(split.x_query)} queries, {len(split.x_db)} database items, "
          f"{epochs} epochs x {max(1, len(split.x_labeled) // batch_size)} steps, filters {filters}")
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
            full = metrics.evaluate_index(index, queries, split.y_query)
            top = metrics.evaluate_index(index, queries, split.y_query, top_k=100)
            print(f"| {seed} | {mode} | {full['mAP']:.4f} | {top['mAP']:.4f} | {full['precision'][10]:.4f} | "
                  f"{full['precision'][100]:.4f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=54000)
    parser.add_argument("--original-queries", type=int, default=None,
                        help="run the original's loops on this many queries and scale (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="ours and faiss: best of this many runs")
    parser.add_argument("--threads", type=int, default=None, help="ranking threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-modes", action="store_true",
                        help="train on digits and compare the retrieval modes instead of timing")
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
    retrieval.set_num_threads(args.threads)

    import faiss

    print(f"# Retrieval benchmark: {args.queries} queries x {args.database} items, M={m}, K={k}, d={d}")
    print(f"numpy {np.__version__}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"{retrieval.get_num_threads()} ranking threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()})")
    print()

    # Ours: the whole evaluation (index build + distances + ranking + AP).
    def evaluate():
        index = PQIndex(z, m).add(codes, labels=db_labels)
        return metrics.evaluate_index(index, queries, query_labels)

    t_eval, result = best_of(args.repeat, evaluate)
    index = PQIndex(z, m).add(codes, labels=db_labels)
    t_dist, _ = best_of(args.repeat, lambda: [None for _ in index.iter_distances(queries)])

    # The original's loops, on all queries or a prefix scaled up.
    n_orig = args.queries if args.original_queries is None else min(args.original_queries, args.queries)
    times, orig_map, orig_ap = run_original(z, m, codes, queries[:n_orig], query_labels[:n_orig], db_labels)
    scale = args.queries / n_orig
    times = {key: value * scale for key, value in times.items()}
    ap_diff = np.abs(result["ap"][:n_orig] - orig_ap).max()

    # Top-1000 search: ours and faiss IndexPQ on the same codes.
    top = min(1000, args.database)
    t_search, (dist, ids) = best_of(args.repeat, lambda: index.search(queries, top))
    fx = index.to_faiss()
    t_faiss, (fdist, fids) = best_of(args.repeat, lambda: fx.search(queries, top))
    same_ids = float((fids == ids).mean())
    max_dist_diff = float(np.abs((m - fdist) - dist).max())

    scaled = "" if n_orig == args.queries else f" (run on {n_orig} queries, scaled x{scale:g})"
    print(f"| step | original loops{scaled} | gpq_keras | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| asymmetric distances (Q x N) | {times['distances']:.2f} s | {t_dist:.2f} s | "
          f"{times['distances'] / t_dist:.0f}x |")
    print(f"| ranking (`np.argsort`) | {times['ranking']:.2f} s | (fused) | |")
    print(f"| AP over the whole database (`cat_apcal`) | {times['ap']:.2f} s | (fused) | |")
    print(f"| **whole mAP evaluation** | **{times['total']:.2f} s** | **{t_eval:.2f} s** | "
          f"**{times['total'] / t_eval:.0f}x** |")
    print()
    print(f"mAP: original {orig_map:.6f} on {n_orig} queries; ours {result['ap'][:n_orig].mean():.6f} "
          f"(max per-query AP difference {ap_diff:.1e}); ours on all queries {result['mAP']:.6f}")
    print()
    print("| top-1000 search | time | queries/s |")
    print("|---|---:|---:|")
    print(f"| faiss IndexPQ (inner product, same codes) | {t_faiss:.2f} s | {args.queries / t_faiss:.0f} |")
    print(f"| gpq_keras PQIndex.search | {t_search:.2f} s | {args.queries / t_search:.0f} |")
    print()
    print(f"ours / faiss time: {t_search / t_faiss:.2f}; same id at the same rank: {same_ids:.4%}; "
          f"max |distance difference|: {max_dist_diff:.1e} (float32 summation order)")


if __name__ == "__main__":
    main()
