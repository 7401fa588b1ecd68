"""Search at scale: `PQIndex.search` (NumPy and fast-scan + exact re-rank) against faiss, 10^4 to 10^7 items.

    .venv/bin/python benchmarks/bench_search.py [--sizes 10000,100000,1000000,2000000,10000000]
        [--queries 1000] [--large-queries 100] [--large 5000000] [-k 100] [--rounds 3]
        [--data clustered|random] [--nprobe 1,8,32,128] [--mode consistent]

Synthetic data of GPQ's 48-bit shape (M=12, K=16, d=12): a random codebook; `clustered` features (the
default) are 1,000 Gaussian clusters (unit-variance centres, noise 0.5) coded with it, `random` codes are uniform. Queries come from the
same distribution. Databases of `--large` items and more get `--large-queries` queries.

For each size it runs, interleaved (each method once per round; best and median of `--rounds`):

- `numpy`: `PQIndex.search(backend="numpy")`, exact brute force block by block;
- `IndexPQ`: faiss' plain PQ scan (`PQIndex.to_faiss()`), exact;
- `fast-scan raw`: faiss `IndexPQFastScan` (`to_faiss(fast_scan=True)`), top-k by 8-bit look-up tables;
- `fast-scan exact`: `PQIndex.search()` (the default): fast-scan candidates re-ranked exactly;
- `IVF nprobe=P`: `to_faiss(nlist=...)`, `IndexIVFPQFastScan` over the same codes.

Columns: time (best / median s), ns per query x item (best), queries/s (best), recall@10 and @k against
the NumPy ids, `= brute force` = queries whose k ids equal the NumPy search's (ties aside: two items
whose float32 distances differ only in the last bit, which depends on the BLAS' summation order, may
swap), and peak memory (the rise
of the process' peak resident memory during the method's runs; /proc/self/clear_refs resets it).
Prints a Markdown table per size, and the build times.
"""

import argparse
import os
import platform
import time

import numpy as np

from gpq_keras import parallel
from gpq_keras.retrieval import PQIndex, import_faiss

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
    """Queries whose ids equal `truth`'s, ties aside: both lists ordered by (float64 distance, id), a
    position may hold another id only at the same distance (to 1e-6): two items whose float32 distances
    differ in the last bit, which depends on the BLAS' summation order, may swap or trade places at k."""
    tables = index.pq.lookup_tables(queries).astype(np.float64)
    rows = np.arange(len(queries))[:, None, None]
    subspaces = np.arange(index.num_subspaces)

    def ordered(found):
        dist = tables[rows, subspaces, index.codes[np.maximum(found, 0)]].sum(-1)
        order = np.lexsort((found, dist), axis=-1)
        return np.take_along_axis(found, order, axis=1), np.take_along_axis(dist, order, axis=1)

    (a, da), (b, db) = ordered(ids), ordered(truth)
    same = (a == b) | (np.abs(da - db) <= 1e-6 * (1 + np.abs(db)))
    return int(np.sum(same.all(axis=1)))


def run_size(size, args):
    faiss = import_faiss()
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
        f"\n### {size:,} items, {num_queries} queries, top {args.k} ({args.data} data, {args.mode} mode)\n"
    )
    print(
        f"| method | best s | median s | ns / (query x item) | queries/s | recall@10 | recall@{args.k} | "
        f"= brute force | peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        best, median = min(times[name]), float(np.median(times[name]))
        ids = results[name][1]
        same = same_up_to_ties(index, queries, ids, truth)
        print(
            f"| {name} | {best:.3f} | {median:.3f} | {best / (num_queries * size) * 1e9:.3f} | "
            f"{num_queries / best:,.0f} | {recall(ids, truth, 10):.4f} | {recall(ids, truth, args.k):.4f} | "
            f"{same}/{num_queries} | {peaks[name] / 1024:.0f} |"
        )
    fs, pq = min(times["fast-scan exact"]), min(times["IndexPQ"])
    print(
        f"\nfast-scan exact: {fs / min(times['fast-scan raw']):.2f}x raw fast-scan time, {pq / fs:.1f}x faster "
        f"than IndexPQ. Builds: " + ", ".join(f"{name} {t:.1f} s" for name, t in builds.items())
    )
    return times


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
    args = parser.parse_args()
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    faiss = import_faiss()
    print(
        f"# bench_search: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), NumPy {np.__version__}, "
        f"{parallel.get_num_threads()} row threads, peak memory reset: {reset_peak()}"
    )
    for size in (int(float(s)) for s in args.sizes.split(",")):
        run_size(size, args)


if __name__ == "__main__":
    main()
