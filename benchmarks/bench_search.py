"""Search at scale: `PQIndex.search` (NumPy and fast-scan + exact re-rank) against faiss, 10^4 to
10^7 items.

    .venv/bin/python benchmarks/bench_search.py [--sizes 10000,100000,1000000,2000000,10000000]
        [--queries 1000] [--large-queries 100] [--large 5000000] [-k 100] [--rounds 3]
        [--data clustered|random] [--nprobe 1,8,32,128] [--mode consistent]

Synthetic data of GPQ's 48-bit shape (M=12, K=16, d=12): a random codebook; `clustered` features
(the default) are 1,000 Gaussian clusters (unit-variance centres, noise 0.5) coded with it,
`random` codes are uniform. Queries come from the same distribution. Databases of `--large` items
and more get `--large-queries` queries.

For each size it runs, interleaved (each method once per round; best and median of `--rounds`):

- `numpy`: `PQIndex.search(backend="numpy")`, exact brute force block by block;
- `IndexPQ`: faiss' plain PQ scan (`PQIndex.to_faiss()`), exact;
- `fast-scan raw`: faiss `IndexPQFastScan` (`to_faiss(fast_scan=True)`), top-k by 8-bit look-up
  tables;
- `fast-scan exact`: `PQIndex.search()` (the default): fast-scan candidates re-ranked exactly;
- `IVF nprobe=P`: `to_faiss(nlist=...)`, `IndexIVFPQFastScan` over the same codes.

Columns: time (best / median s), ns per query x item (best), queries/s (best), recall@10 and @k
against the NumPy ids, `= brute force` = queries whose k ids equal the NumPy search's (ties aside:
two items whose float32 distances differ only in the last bit, which depends on the BLAS' summation
order, may swap), and peak memory (the rise of the process' peak resident memory during the method's
runs; /proc/self/clear_refs resets it). Prints a Markdown table per size, and the build times.

    .venv/bin/python benchmarks/bench_search.py --dispatch [--dispatch-size 54000] [--queries 1000]
        [--ks 10,100,1000,1687,3375,13500,54000] [--rounds 3]

instead times `search(q, k)` for k up to the whole database (the paper's 1,000 queries over 54,000
items) on the default backend (`auto`: fast-scan candidates for k <= ntotal / 32, the NumPy full
ranking above), on `backend="numpy"`, by fast-scan re-ranking forced for every k
(`fast_scan.rerank`, what `auto` did for every k before) and by `rank` + `metrics.evaluate_ranking`
(mAP@k of random labels): no k should make `auto` slower than the full ranking. `= numpy`: queries
whose k ids equal the NumPy search's, ties aside (auto, fast-scan forced).
"""

import argparse
import os
import platform
import time

import numpy as np

from gpq_keras import metrics, parallel
from gpq_keras.retrieval import PQIndex, faiss_bridge, fast_scan, import_faiss

M, K, D_SUB = 12, 16, 12
CLUSTERS = 1000
NOISE = 0.5  # per-dimension noise around the unit-variance cluster centres
GENERATE_BLOCK = 1 << 17


def rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    """Reset VmHWM to the current RSS (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_index(size, data, mode, seed=0):
    """A PQIndex of `size` synthetic items, its codebook and the cluster centres."""
    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(K, M * D_SUB)).astype(np.float32)
    index = PQIndex(codebook, M, mode)
    centres = rng.normal(size=(CLUSTERS, M * D_SUB)).astype(np.float32)
    codes = np.empty((size, M), np.uint8)
    for start in range(0, size, GENERATE_BLOCK):
        n = min(GENERATE_BLOCK, size - start)
        block_rng = np.random.default_rng([seed, start])
        if data == "random":
            codes[start : start + n] = block_rng.integers(0, K, (n, M), dtype=np.uint8)
        else:
            x = centres[block_rng.integers(0, CLUSTERS, n)] + NOISE * block_rng.normal(
                size=(n, M * D_SUB)
            ).astype(np.float32)
            codes[start : start + n] = index.pq.encode(x)
    index.add(codes)
    return index, centres


def make_queries(count, centres, seed=1):
    rng = np.random.default_rng(seed)
    return (
        centres[rng.integers(0, CLUSTERS, count)]
        + NOISE * rng.normal(size=(count, M * D_SUB)).astype(np.float32)
    ).astype(np.float32)


def recall(found, truth, at):
    """Mean |found[:, :at] & truth[:, :at]| / at."""
    return float(np.mean([len(np.intersect1d(f[:at], t[:at])) / at for f, t in zip(found, truth)]))


def same_up_to_ties(index, queries, ids, truth):
    """Queries whose ids equal `truth`'s, ties aside: both lists ordered by (float64 distance, id),
    a position may hold another id only at the same distance (to 1e-6): two items whose float32
    distances differ in the last bit, which depends on the BLAS' summation order, may swap or trade
    places at k. Chunks of queries bound the memory."""
    subspaces = np.arange(index.num_subspaces)
    step = max(1, (1 << 24) // (ids.shape[1] * index.num_subspaces))
    count = 0
    for start in range(0, len(queries), step):
        tables = index.pq.lookup_tables(queries[start : start + step]).astype(np.float64)
        rows = np.arange(len(tables))[:, None, None]

        def ordered(found, tables=tables, rows=rows):
            dist = tables[rows, subspaces, index.codes[np.maximum(found, 0)]].sum(-1)
            order = np.lexsort((found, dist), axis=-1)
            return np.take_along_axis(found, order, axis=1), np.take_along_axis(dist, order, axis=1)

        block = slice(start, start + step)
        (a, da), (b, db) = ordered(ids[block]), ordered(truth[block])
        same = (a == b) | (np.abs(da - db) <= 1e-6 * (1 + np.abs(db)))
        count += int(np.sum(same.all(axis=1)))
    return count


def run_size(size, args):
    num_queries = args.large_queries if size >= args.large else args.queries
    start = time.perf_counter()
    index, centres = make_index(size, args.data, args.mode)
    queries = make_queries(num_queries, centres)
    prepared = index.pq.prepare_queries(queries)
    builds = {"data": time.perf_counter() - start}
    start = time.perf_counter()
    flat = index.to_faiss()
    builds["IndexPQ"] = time.perf_counter() - start
    start = time.perf_counter()
    fast = index.to_faiss(fast_scan=True)
    builds["IndexPQFastScan"] = time.perf_counter() - start
    nlist = args.nlist or int(2 ** round(np.log2(np.sqrt(size))))
    start = time.perf_counter()
    ivf = index.to_faiss(nlist=nlist)
    builds[f"IVF nlist={nlist}"] = time.perf_counter() - start
    index.search(queries[:2], args.k)  # builds PQIndex's cached fast-scan index outside the timings

    def ivf_search(nprobe):
        def run():
            ivf.nprobe = nprobe
            return ivf.search(prepared, args.k)

        return run

    methods = {
        "numpy": lambda: index.search(queries, args.k, backend="numpy"),
        "IndexPQ": lambda: flat.search(prepared, args.k),
        "fast-scan raw": lambda: fast.search(prepared, args.k),
        "fast-scan exact": lambda: index.search(queries, args.k),
    }
    for nprobe in args.nprobe:
        methods[f"IVF nprobe={nprobe}"] = ivf_search(nprobe)
    times = {name: [] for name in methods}
    peaks = {name: 0 for name in methods}
    results = {}
    for _ in range(args.rounds):
        for name, func in methods.items():
            base = rss_kib("VmRSS")
            reset_peak()
            begin = time.perf_counter()
            results[name] = func()
            times[name].append(time.perf_counter() - begin)
            peaks[name] = max(peaks[name], rss_kib("VmHWM") - base)
    truth = results["numpy"][1]
    print(
        f"\n### {size:,} items, {num_queries} queries, top {args.k} ({args.data} data, "
        f"{args.mode} mode)\n"
    )
    print(
        f"| method | best s | median s | ns / (query x item) | queries/s | recall@10 | "
        f"recall@{args.k} | = brute force | peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        best, median = min(times[name]), float(np.median(times[name]))
        ids = results[name][1]
        same = same_up_to_ties(index, queries, ids, truth)
        print(
            f"| {name} | {best:.3f} | {median:.3f} | {best / (num_queries * size) * 1e9:.3f} | "
            f"{num_queries / best:,.0f} | {recall(ids, truth, 10):.4f} | "
            f"{recall(ids, truth, args.k):.4f} | {same}/{num_queries} | {peaks[name] / 1024:.0f} |"
        )
    fs, pq = min(times["fast-scan exact"]), min(times["IndexPQ"])
    print(
        f"\nfast-scan exact: {fs / min(times['fast-scan raw']):.2f}x raw fast-scan time, "
        f"{pq / fs:.1f}x faster than IndexPQ. Builds: "
        + ", ".join(f"{name} {t:.1f} s" for name, t in builds.items())
    )
    return times


def run_dispatch(args):
    """`search(q, k)` for k up to ntotal: auto, numpy, fast-scan forced, rank + evaluate_ranking."""
    index, centres = make_index(args.dispatch_size, args.data, args.mode)
    queries = make_queries(args.queries, centres)
    rng = np.random.default_rng(2)
    query_labels = rng.integers(0, 10, len(queries))
    db_labels = rng.integers(0, 10, index.ntotal)
    ks = [min(int(k), index.ntotal) for k in args.ks.split(",")]
    prepared, tables = index.pq.prepare_queries(queries), index.pq.lookup_tables(queries)
    searcher = faiss_bridge.fast_scan_index(index.pq, index.codes)
    search = faiss_bridge.fast_scan_search(searcher, index.num_subspaces)
    index.search(queries[:2], 10)  # builds PQIndex's cached fast-scan index outside the timings

    def methods(k):
        return {
            "auto": lambda: index.search(queries, k),
            "numpy": lambda: index.search(queries, k, backend="numpy"),
            "fast-scan forced": lambda: (
                None,
                index.ids[fast_scan.rerank(search, prepared, tables, index.codes, k)[1]],
            ),
            "rank + evaluate_ranking": lambda: metrics.evaluate_ranking(
                index.rank(queries, k, with_distances=False), query_labels, db_labels
            ),
        }

    names = list(methods(1))
    times = {(k, name): [] for k in ks for name in names}
    results = {}
    for _ in range(args.rounds):
        for k in ks:
            for name, func in methods(k).items():
                begin = time.perf_counter()
                results[k, name] = func()
                times[k, name].append(time.perf_counter() - begin)
    print(
        f"\n### search(q, k): {len(queries)} queries, {index.ntotal:,} items, M={M} K={K} "
        f"({args.data} data, {args.mode} mode), {args.rounds} interleaved rounds\n"
    )
    print("| k | auto path | " + " | ".join(f"{n} best / median s" for n in names) + " | = numpy |")
    print("|---:|---|" + "---:|" * len(names) + "---:|")
    for k in ks:
        cells = [f"{min(times[k, n]):.2f} / {np.median(times[k, n]):.2f}" for n in names]
        truth = results[k, "numpy"][1]
        same = [
            same_up_to_ties(index, queries, results[k, n][1], truth)
            for n in ("auto", "fast-scan forced")
        ]
        path = "fast-scan" if index.fast_scan_pays(k) else "numpy"
        print(
            f"| {k:,} | {path} | " + " | ".join(cells) + f" | {same[0]}, {same[1]} of "
            f"{len(queries)} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,2000000,10000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--large-queries", type=int, default=100)
    parser.add_argument(
        "--large", type=int, default=5_000_000, help="sizes from here on get --large-queries"
    )
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--mode", choices=("original", "consistent"), default="consistent")
    parser.add_argument(
        "--nlist", type=int, default=None, help="IVF lists (default ~sqrt(N), a power of 2)"
    )
    parser.add_argument("--nprobe", default="1,8,32,128")
    parser.add_argument(
        "--dispatch", action="store_true", help="time search(q, k) for k up to the whole database"
    )
    parser.add_argument("--dispatch-size", type=int, default=54_000)
    parser.add_argument("--ks", default="10,100,1000,1687,3375,13500,54000")
    args = parser.parse_args()
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    faiss = import_faiss()
    print(
        f"# bench_search: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"NumPy {np.__version__}, {parallel.get_num_threads()} row threads, "
        f"peak memory reset: {reset_peak()}"
    )
    if args.dispatch:
        return run_dispatch(args)
    for size in (int(float(s)) for s in args.sizes.split(",")):
        run_size(size, args)


if __name__ == "__main__":
    main()
