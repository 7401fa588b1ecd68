"""`gpq serve` under load: requests/s and p50/p95 latency of one-image search at 1, 4 and 16
concurrent clients over synthetic indexes, against `gpq search` per call; and the largest index
one server loads here.

    .venv/bin/python benchmarks/bench_serve.py [--sizes 10000,1000000] [--clients 1,4,16]
        [--seconds 8] [--search-calls 2] [--largest 10000000] [--output benchmarks/results/serve.md]

A tiny model of GPQ's 48-bit shape (M=12, K=16, d=12; 32x32 inputs, VGG widths 8, 16, 16, 16) is
saved untrained; each index holds `size` uniform random codes from its quantiser, with a file name
per item (`/photos/NNNNNNN.jpg`: an index of files, as `gpq index build --images` writes). Each
size gets its own `gpq serve --port 0` (a subprocess); clients are threads of this process, each
with its own httpx connection, sending one 256x256 JPEG as the body of `POST /search?k=10` back to
back for `--seconds` after a warm-up. The server and the clients share this machine's CPUs, which
is the honest figure for a server on one machine but makes high concurrency look worse than it is
with clients elsewhere. `mean batch` is the mean of the answers' `X-GPQ-Batch` headers.

`gpq search` rows: the wall time of `gpq search --image Q -k 10` in a fresh process (TensorFlow's
import, the model and the index load, one search), the median of `--search-calls`.

`--largest N` (0: skip) loads an index of N codes without file names into one server: its start
time, the server's resident memory and one client's latency. Prints Markdown and writes it to
`--output`.
"""

import argparse
import concurrent.futures
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

M, K, D_SUB = 12, 16, 12
TOP_K = 10
GPQ_BIN = os.path.join(os.path.dirname(sys.executable), "gpq")


def make_model(folder):
    """The tiny 48-bit model, saved -> its path."""
    import keras

    from gpq_keras import GPQ
    from gpq_keras.config import GPQConfig

    keras.utils.set_random_seed(0)
    config = GPQConfig(
        num_subspaces=M,
        num_codewords=K,
        subspace_dim=D_SUB,
        num_classes=10,
        image_shape=(32, 32, 3),
        filters=(8, 16, 16, 16),
    )
    model = GPQ(config)
    path = os.path.join(folder, "model.keras")
    model.save(path)
    return model, path


def make_index(model, size, path, with_sources=True, seed=0):
    """A PQIndex of `size` random codes of the model's quantiser, saved to `path` -> seconds."""
    from gpq_keras.retrieval import PQIndex

    start = time.perf_counter()
    index = PQIndex.from_model(model)
    codes = np.random.default_rng(seed).integers(0, K, (size, M), dtype=np.uint8)
    sources = None
    if with_sources:
        sources = np.char.add(
            np.char.add("/photos/", np.char.zfill(np.arange(size).astype(str), 7)), ".jpg"
        )
    index.add(codes, sources=sources)
    index.save(path)
    return time.perf_counter() - start


def query_file(folder):
    """A 256x256 JPEG of smooth colours -> its path."""
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    path = os.path.join(folder, "query.jpg")
    Image.fromarray(image).save(path, quality=90)
    return path


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`gpq serve --port 0` in a subprocess; `url`, `start_seconds` (launch to its URL line)."""

    def __init__(self, model_path, index_path, log_path):
        self.log_path = log_path
        start = time.perf_counter()
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [GPQ_BIN, "serve", "--model", model_path, "--index", index_path, "--port", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while True:
            text = open(log_path).read()
            found = re.search(r"on (http://127\.0\.0\.1:\d+) ", text)
            if found:
                self.url = found.group(1)
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpq serve ended: {text}")
            time.sleep(0.1)
        self.start_seconds = time.perf_counter() - start

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def load(url, data, clients, seconds, warmup=5):
    """`clients` threads posting `data` back to back for `seconds` (after `warmup` requests each)
    -> (requests, requests/s, p50 ms, p95 ms, mean batch); the rate counts until the last answer."""
    import httpx

    barrier = threading.Barrier(clients)
    window = {}

    def run(_):
        latencies, batches = [], []
        with httpx.Client(timeout=300) as client:
            for _ in range(warmup):
                client.post(f"{url}/search", params={"k": TOP_K}, content=data).raise_for_status()
            if barrier.wait() == 0:
                window["start"] = time.perf_counter()
            barrier.wait()
            stop_at = window["start"] + seconds
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                response = client.post(f"{url}/search", params={"k": TOP_K}, content=data)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                assert len(response.json()["results"]) == TOP_K
                batches.append(int(response.headers["x-gpq-batch"]))
        return latencies, batches, time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, range(clients)))
    latencies = np.concatenate([np.array(r[0]) for r in results]) * 1000
    batches = [b for r in results for b in r[1]]
    wall = max(r[2] for r in results) - window["start"]
    return (
        len(latencies),
        len(latencies) / wall,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 95)),
        float(np.mean(batches)),
    )


def gpq_search_seconds(model_path, index_path, query, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        subprocess.run(
            [GPQ_BIN, "search", "--model", model_path, "--index", index_path, "--image", query]
            + ["-k", str(TOP_K)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--search-calls", type=int, default=2)
    parser.add_argument("--largest", type=int, default=10_000_000)
    parser.add_argument("--output", default="benchmarks/results/serve.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    clients = [int(c) for c in args.clients.split(",")]

    folder = tempfile.mkdtemp(prefix="bench_serve_")
    model, model_path = make_model(folder)
    query = query_file(folder)
    data = open(query, "rb").read()
    rows, memory = [], []
    began = time.perf_counter()
    for size in sizes:
        index_path = os.path.join(folder, f"index_{size}.npz")
        built = make_index(model, size, index_path)
        server = Server(model_path, index_path, os.path.join(folder, f"serve_{size}.log"))
        try:
            memory.append(
                (
                    size,
                    "yes",
                    os.path.getsize(index_path),
                    built,
                    server.start_seconds,
                    rss_mib(server.proc.pid),
                )
            )
            for c in clients:
                n, rate, p50, p95, batch = load(server.url, data, c, args.seconds)
                rows.append((size, "gpq serve", c, n, rate, p50, p95, f"{batch:.1f}"))
                print(rows[-1], flush=True)
        finally:
            server.stop()
        t = gpq_search_seconds(model_path, index_path, query, args.search_calls)
        rows.append(
            (
                size,
                "gpq search (a process per call)",
                1,
                args.search_calls,
                1 / t,
                t * 1000,
                float("nan"),
                "-",
            )
        )
        print(rows[-1], flush=True)
        os.remove(index_path)
    if args.largest:
        index_path = os.path.join(folder, f"index_{args.largest}.npz")
        built = make_index(model, args.largest, index_path, with_sources=False)
        server = Server(model_path, index_path, os.path.join(folder, "serve_largest.log"))
        try:
            memory.append(
                (
                    args.largest,
                    "no",
                    os.path.getsize(index_path),
                    built,
                    server.start_seconds,
                    rss_mib(server.proc.pid),
                )
            )
            n, rate, p50, p95, batch = load(server.url, data, 1, args.seconds)
            rows.append(
                (args.largest, "gpq serve (no file names)", 1, n, rate, p50, p95, f"{batch:.1f}")
            )
        finally:
            server.stop()
        os.remove(index_path)

    cpu = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    lines = [
        "# gpq serve under load",
        "",
        f"{cpu}; server and clients on the same machine. "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
        f"{(time.perf_counter() - began) / 60:.1f} min in all.",
        f"Command: `python benchmarks/bench_serve.py --sizes {args.sizes} --clients "
        f"{args.clients} --seconds {args.seconds:g} --largest {args.largest}`",
        "",
        f"One-image search (`POST /search?k={TOP_K}`, a 256x256 JPEG) with a tiny untrained "
        f"48-bit model (M={M}, K={K}, 32x32 inputs); random codes.",
        "",
        "| items | method | clients | requests | requests/s | p50 ms | p95 ms | mean batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, method, c, n, rate, p50, p95, batch in rows:
        p95_text = "-" if np.isnan(p95) else f"{p95:.1f}"
        lines.append(
            f"| {size:,} | {method} | {c} | {n} | {rate:.2f} | {p50:.1f} | {p95_text} | {batch} |"
        )
    lines += [
        "",
        "| items | file names | index file MB | build + save s | server start s | server RSS MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size, names, file_bytes, built, started, rss in memory:
        lines.append(
            f"| {size:,} | {names} | {file_bytes / 1e6:.1f} | {built:.1f} | {started:.1f} | "
            f"{rss:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
