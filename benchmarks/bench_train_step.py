"""Train-step time: the original's TF1 training step against ours (float32, mixed bfloat16, XLA;
Keras on JAX and on PyTorch).

Every candidate runs GPQ's full training step (two backbone calls with training-mode batch norm,
soft PQ, the three losses, gradient reversal, Adam) on the same labeled and unlabeled batches of
`--batch-size` images each, fed from NumPy on every step (as the original's train.py feeds them),
all in one process:

- `TF1 graph (original)`: `tests/tf1_reference.py`'s `TF1TrainStep`, the original's graph
  (`ordered=False`, as train.py builds it) in its own `tf.compat.v1.Session`,
  `sess.run([train_op, loss], feed_dict)`;
- `Keras float32`: `GPQ(config)`, `compile(jit_compile=False)`, `train_on_batch` (Keras' "auto"
  would pick XLA on a GPU, so it is set off here: the XLA row measures that);
- `Keras mixed_bfloat16`: `GPQ(config, dtype="mixed_bfloat16")` (backbone in bfloat16, heads in
  float32);
- `Keras float32 + XLA`: `compile(jit_compile=True)`;
- with `--backend jax`: `Keras on JAX float32` and `Keras on JAX mixed_bfloat16`, the same model and
  `train_on_batch` with `KERAS_BACKEND=jax` (XLA-compiled, as Keras runs JAX);
- with `--backend torch`: `Keras on torch float32` and `Keras on torch mixed_bfloat16` (eager,
  Keras' default on torch), and with `--jit-compile` also `Keras on torch float32 + torch.compile`
  (`compile(jit_compile=True)`: Keras wraps the step in `torch.compile`; its first step is the
  compilation). `--backend jax,torch` runs both.
  A backend is chosen once per process, so these run in one worker process per backend that this one
  drives step by step over a pipe: the rounds interleave them with the TensorFlow candidates all the
  same, and only one process computes at a time.

One warm-up step each (tracing, XLA compilation: its time is the `first step` column), then
`--rounds` rounds, each running every candidate once (the order rotates per round) so that load
changes hit all alike. Prints a Markdown table: best and median seconds per step, images/s at the
best time (2 x batch per step), and the best time over the TF1 step's best time. Run by hand:

    .venv/bin/python benchmarks/bench_train_step.py [--batch-size 500] [--bits 48] [--rounds 3]
        [--filters 64,128,256,512] [--only tf1,f32,bf16,xla] [--backend jax,torch] [--jit-compile]

A quick CPU run: `--batch-size 100 --filters 16,32,64,64` (a few minutes on 2 cores).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "--worker" not in sys.argv:
    os.environ["KERAS_BACKEND"] = "tensorflow"


def _inputs(batch_size, config):
    """The same labeled and unlabeled batches and labels in every process (NumPy, seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x_l = rng.normal(size=(batch_size, *config.image_shape)).astype(np.float32)
    x_u = rng.normal(size=(batch_size, *config.image_shape)).astype(np.float32)
    return x_l, x_u, rng.integers(0, config.num_classes, batch_size)


def _worker(settings):
    """The JAX or torch side ($KERAS_BACKEND): build the candidates of `settings` (JSON), then
    answer each candidate name read from stdin with one step's loss, until stdin closes."""
    import keras

    from gpq_keras import GPQ, GPQConfig

    settings = json.loads(settings)
    config = GPQConfig.from_bits(settings["bits"], filters=tuple(settings["filters"]))
    x_l, x_u, labels = _inputs(settings["batch_size"], config)
    steps = {}
    for name in settings["names"]:
        model = GPQ(config, dtype="mixed_bfloat16" if name.endswith("-bf16") else None)
        model.compile(jit_compile=True if name == "torch-compile" else "auto")  # torch: eager
        steps[name] = (
            lambda m: (
                lambda: m.train_on_batch(
                    {"labeled": x_l, "unlabeled": x_u}, labels, return_dict=True
                )["loss"]
            )
        )(model)
    backend = keras.config.backend()
    print(json.dumps({backend: __import__(backend).__version__}), flush=True)
    for line in sys.stdin:
        print(float(steps[line.strip()]()), flush=True)


if "--worker" in sys.argv:
    _worker(sys.argv[sys.argv.index("--worker") + 1])
    sys.exit(0)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import tf1_reference as ref  # noqa: E402

from gpq_keras import GPQ, GPQConfig  # noqa: E402

CANDIDATES = {
    "tf1": "TF1 graph (original)",
    "f32": "Keras float32",
    "bf16": "Keras mixed_bfloat16",
    "xla": "Keras float32 + XLA",
}
WORKER_CANDIDATES = {  # {backend: {name: row}}, each backend's run in a `BackendWorker`
    "jax": {
        "jax": "Keras on JAX float32",
        "jax-bf16": "Keras on JAX mixed_bfloat16",
    },
    "torch": {
        "torch": "Keras on torch float32",
        "torch-bf16": "Keras on torch mixed_bfloat16",
        "torch-compile": "Keras on torch float32 + torch.compile",
    },
}
JIT_ONLY = ("torch-compile",)  # with --jit-compile


class BackendWorker:
    """This script in a `KERAS_BACKEND=backend` process, driven one step at a time: `step(name)` ->
    loss."""

    def __init__(self, backend, names, batch_size, bits, filters):
        self.backend = backend
        settings = json.dumps(
            {"names": names, "batch_size": batch_size, "bits": bits, "filters": filters}
        )
        env = dict(os.environ, KERAS_BACKEND=backend)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", settings],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.versions = json.loads(self._read())

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the {self.backend} worker ended (exit status {self.process.wait()})"
            )
        return line

    def step(self, name):
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return float(self._read())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def _device():
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ]
        return f"GPU: {', '.join(names)}"
    return f"CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def _tf1_step(config, x_l, x_u, labels):
    session_config = tf.compat.v1.ConfigProto()
    session_config.gpu_options.allow_growth = True  # share the GPU with the Keras candidates
    step = ref.TF1TrainStep(
        filters=config.filters,
        num_subspaces=config.num_subspaces,
        num_codewords=config.num_codewords,
        subspace_dim=config.subspace_dim,
        num_classes=config.num_classes,
        image_shape=config.image_shape,
        ordered=False,
        session_config=session_config,
    )
    return step.step_fn(x_l, x_u, labels)


def _keras_step(config, x_l, x_u, labels, dtype=None, jit_compile=False):
    model = GPQ(config, dtype=dtype)
    model.compile(jit_compile=jit_compile)
    inputs = {"labeled": x_l, "unlabeled": x_u}
    return lambda: model.train_on_batch(inputs, labels, return_dict=True)["loss"]


def _time(rounds, candidates):
    """{name: (first-step seconds, [seconds per timed step])}, candidates interleaved round by
    round."""
    first, times = {}, {name: [] for name in candidates}
    for name, step in candidates.items():
        start = time.perf_counter()
        loss = step()
        first[name] = time.perf_counter() - start
        if not np.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss} on the warm-up step")
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], times[name]) for name in candidates}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch-size", type=int, default=500, help="per stream (default 500, the original's)"
    )
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--filters", default="64,128,256,512", help="the four VGG stage widths")
    parser.add_argument(
        "--only",
        help="comma-separated subset of "
        + ", ".join([*CANDIDATES, *(n for names in WORKER_CANDIDATES.values() for n in names)])
        + " (default: all of the backends run)",
    )
    parser.add_argument(
        "--backend",
        default="tensorflow",
        help="jax, torch or jax,torch: also Keras on those backends (a worker process each), "
        "beside TensorFlow",
    )
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="with torch: also the torch step under torch.compile",
    )
    args = parser.parse_args()
    backends = [b.strip() for b in args.backend.split(",") if b.strip() not in ("", "tensorflow")]
    if set(backends) - set(WORKER_CANDIDATES):
        parser.error(f"--backend: choose from tensorflow, {', '.join(WORKER_CANDIDATES)}")
    known = dict(CANDIDATES)
    for backend in backends:
        known.update(
            (name, row)
            for name, row in WORKER_CANDIDATES[backend].items()
            if args.jit_compile or name not in JIT_ONLY
        )
    only = [name.strip() for name in (args.only or ",".join(known)).split(",") if name.strip()]
    unknown = sorted(set(only) - set(known))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(known)}")
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)

    filters = tuple(int(v) for v in args.filters.split(","))
    config = GPQConfig.from_bits(args.bits, filters=filters)
    x_l, x_u, labels = _inputs(args.batch_size, config)

    builders = {
        "tf1": lambda: _tf1_step(config, x_l, x_u, labels),
        "f32": lambda: _keras_step(config, x_l, x_u, labels),
        "bf16": lambda: _keras_step(config, x_l, x_u, labels, dtype="mixed_bfloat16"),
        "xla": lambda: _keras_step(config, x_l, x_u, labels, jit_compile=True),
    }
    candidates = {name: builders[name]() for name in CANDIDATES if name in only}
    workers = []
    for backend in backends:
        names = [name for name in WORKER_CANDIDATES[backend] if name in only and name in known]
        if names:
            worker = BackendWorker(backend, names, args.batch_size, args.bits, list(filters))
            workers.append(worker)
            candidates.update(
                {name: (lambda w, n: lambda: w.step(n))(worker, name) for name in names}
            )
    results = _time(args.rounds, candidates)
    for worker in workers:
        worker.close()

    images = 2 * args.batch_size
    reference = min(results["tf1"][1]) if "tf1" in results else None
    print(
        f"GPQ train step, {args.batch_size} labeled + {args.batch_size} unlabeled images of "
        f"{'x'.join(map(str, config.image_shape))}, {config.bits} bits (M={config.num_subspaces}, "
        f"K={config.num_codewords}), VGG widths {','.join(map(str, filters))}; "
        f"{args.rounds} rounds after one warm-up step each"
    )
    print(
        f"{_device()}; TensorFlow {tf.__version__}, Keras {keras.__version__}"
        + "".join(
            f", {'JAX' if w.backend == 'jax' else 'PyTorch'} {w.versions[w.backend]}"
            for w in workers
        )
    )
    print()
    print(
        "| step | first step (s) | best s/step | median s/step | images/s (best) "
        "| time / TF1 time |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (first, times) in results.items():
        best, median = min(times), statistics.median(times)
        ratio = f"{best / reference:.2f}" if reference else "-"
        print(
            f"| {known[name]} | {first:.2f} | {best:.3f} | {median:.3f} "
            f"| {images / best:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
