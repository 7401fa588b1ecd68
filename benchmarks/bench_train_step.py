"""Train-step time: the original's TF1 training step against ours (float32, mixed bfloat16, XLA).

Every candidate runs GPQ's full training step (two backbone calls with training-mode batch norm, soft PQ,
the three losses, gradient reversal, Adam) on the same labeled and unlabeled batches of `--batch-size` images
each, fed from NumPy on every step (as the original's train.py feeds them), all in one process:

- `TF1 graph (original)`: `tests/tf1_reference.py`'s `TF1TrainStep`, the original's graph (`ordered=False`,
  as train.py builds it) in its own `tf.compat.v1.Session`, `sess.run([train_op, loss], feed_dict)`;
- `Keras float32`: `GPQ(config)`, `compile(jit_compile=False)`, `train_on_batch` (Keras' "auto" would pick XLA
  on a GPU, so it is set off here: the XLA row measures that);
- `Keras mixed_bfloat16`: `GPQ(config, dtype="mixed_bfloat16")` (backbone in bfloat16, heads in float32);
- `Keras float32 + XLA`: `compile(jit_compile=True)`.

One warm-up step each (tracing, XLA compilation: its time is the `first step` column), then `--rounds`
rounds, each running every candidate once (the order rotates per round) so that load changes hit all alike.
Prints a Markdown table: best and median seconds per step, images/s at the best time (2 x batch per step),
and the best time over the TF1 step's best time. Run by hand:

    .venv/bin/python benchmarks/bench_train_step.py [--batch-size 500] [--bits 48] [--rounds 3]
        [--filters 64,128,256,512] [--only tf1,f32,bf16,xla]

A quick CPU run: `--batch-size 100 --filters 16,32,64,64` (a few minutes on 2 cores).
"""

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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


def _device():
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"GPU: {', '.join(names)}"
    return f"CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def _tf1_step(config, x_l, x_u, labels):
    session_config = tf.compat.v1.ConfigProto()
    session_config.gpu_options.allow_growth = True  # share the GPU with the Keras candidates
    step = ref.TF1TrainStep(filters=config.filters, num_subspaces=config.num_subspaces,
                            num_codewords=config.num_codewords, subspace_dim=config.subspace_dim,
                            num_classes=config.num_classes, image_shape=config.image_shape, ordered=False,
                            session_config=session_config)
    return step.step_fn(x_l, x_u, labels)


def _keras_step(config, x_l, x_u, labels, dtype=None, jit_compile=False):
    model = GPQ(config, dtype=dtype)
    model.compile(jit_compile=jit_compile)
    inputs = {"labeled": x_l, "unlabeled": x_u}
    return lambda: model.train_on_batch(inputs, labels, return_dict=True)["loss"]


def _time(rounds, candidates):
    """{name: (first-step seconds, [seconds per timed step])}, candidates interleaved round by round."""
    first, times = {}, {name: [] for name in candidates}
    for name, step in candidates.items():
        start = time.perf_counter()
        loss = step()
        first[name] = time.perf_counter() - start
        if not np.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss} on the warm-up step")
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], times[name]) for name in candidates}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=500, help="per stream (default 500, the original's)")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--filters", default="64,128,256,512", help="the four VGG stage widths")
    parser.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated subset of "
                                                                        + ", ".join(CANDIDATES))
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)

    filters = tuple(int(v) for v in args.filters.split(","))
    config = GPQConfig.from_bits(args.bits, filters=filters)
    rng = np.random.default_rng(0)
    x_l = rng.normal(size=(args.batch_size, *config.image_shape)).astype(np.float32)
    x_u = rng.normal(size=(args.batch_size, *config.image_shape)).astype(np.float32)
    labels = rng.integers(0, config.num_classes, args.batch_size)

    builders = {
        "tf1": lambda: _tf1_step(config, x_l, x_u, labels),
        "f32": lambda: _keras_step(config, x_l, x_u, labels),
        "bf16": lambda: _keras_step(config, x_l, x_u, labels, dtype="mixed_bfloat16"),
        "xla": lambda: _keras_step(config, x_l, x_u, labels, jit_compile=True),
    }
    candidates = {name: builders[name]() for name in CANDIDATES if name in only}
    results = _time(args.rounds, candidates)

    images = 2 * args.batch_size
    reference = min(results["tf1"][1]) if "tf1" in results else None
    print(f"GPQ train step, {args.batch_size} labeled + {args.batch_size} unlabeled images of "
          f"{'x'.join(map(str, config.image_shape))}, {config.bits} bits (M={config.num_subspaces}, "
          f"K={config.num_codewords}), VGG widths {','.join(map(str, filters))}; {args.rounds} rounds "
          f"after one warm-up step each")
    print(f"{_device()}; TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print()
    print("| step | first step (s) | best s/step | median s/step | images/s (best) | time / TF1 time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (first, times) in results.items():
        best, median = min(times), statistics.median(times)
        ratio = f"{best / reference:.2f}" if reference else "-"
        print(f"| {CANDIDATES[name]} | {first:.2f} | {best:.3f} | {median:.3f} | {images / best:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
