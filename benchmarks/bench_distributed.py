"""Train-step throughput under tf.distribute: one device against MirroredStrategy at the same global
batch.

This machine's CPU is split into two logical devices (`tf.config.set_logical_device_configuration`),
so `MirroredStrategy` runs two replicas on the same cores: the comparison shows what the
cross-replica work costs (the all-gather of labels and descriptors for the N-pair loss, the
all-reduce of the gradients, and with sync batch norm two all-reduces per batch-norm layer and
stream), not a speed-up. On several GPUs the same script measures the scaling.

Candidates, each `fit` on the same endless batch of `--batch-size` labeled + `--batch-size`
unlabeled images (the global batch), `--steps` steps per timed call:
- `one device`: the default strategy;
- `mirrored, 2 replicas`: `MirroredStrategy` over the two logical CPUs (or every GPU);
- `mirrored, 2 replicas, sync BN`: the same with `GPQConfig.sync_batch_norm=True` (what `gpq train`
  uses).

One warm-up call each (tracing), then `--rounds` rounds running every candidate once, the order
rotating per round. Prints a Markdown table: best and median seconds per step, steps/s and images/s
at the best time, and the time over the one-device time. Run by hand:

    .venv/bin/python benchmarks/bench_distributed.py [--batch-size 64] [--filters 64,128,256,512]
        [--rounds 3] [--steps 3]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

if not tf.config.list_physical_devices("GPU"):  # before TensorFlow's runtime starts
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import _device  # noqa: E402

from gpq_keras import GPQ, GPQConfig  # noqa: E402
from gpq_keras.distribute import make_strategy  # noqa: E402


def _candidate(strategy, config, dataset, steps):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = GPQ(config)
        model.compile(jit_compile=False)

    def run():
        history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0).history
        return history["loss"][-1]

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64, help="global batch per stream (64)")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--filters", default="64,128,256,512", help="the four VGG stage widths")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed call")
    args = parser.parse_args()

    mirrored = make_strategy("mirrored")
    replicas = mirrored.num_replicas_in_sync
    if args.batch_size % replicas:
        parser.error(f"--batch-size must be a multiple of the {replicas} replicas")
    config = GPQConfig.from_bits(args.bits, filters=tuple(int(v) for v in args.filters.split(",")))
    rng = np.random.default_rng(0)
    shape = (args.batch_size, *config.image_shape)
    batch = (
        {
            "labeled": rng.normal(size=shape).astype(np.float32),
            "unlabeled": rng.normal(size=shape).astype(np.float32),
        },
        rng.integers(0, config.num_classes, args.batch_size),
    )
    dataset = tf.data.Dataset.from_tensors(batch).repeat()

    candidates = {
        "one device": _candidate(make_strategy("one"), config, dataset, args.steps),
        f"mirrored, {replicas} replicas": _candidate(mirrored, config, dataset, args.steps),
        f"mirrored, {replicas} replicas, sync BN": _candidate(
            mirrored, config.replace(sync_batch_norm=True), dataset, args.steps
        ),
    }
    first, times = {}, {name: [] for name in candidates}
    for name, run in candidates.items():
        start = time.perf_counter()
        if not np.isfinite(run()):
            raise RuntimeError(f"{name}: non-finite loss on the warm-up call")
        first[name] = time.perf_counter() - start
    names = list(candidates)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append((time.perf_counter() - start) / args.steps)

    print(
        f"GPQ fit steps, global batch {args.batch_size} labeled + {args.batch_size} unlabeled "
        f"images of "
        f"{'x'.join(map(str, config.image_shape))}, {config.bits} bits, VGG widths {args.filters}; "
        f"{args.rounds} rounds of {args.steps} steps after one warm-up call each"
    )
    print(
        f"{_device()}; {replicas} "
        f"{'GPUs' if tf.config.list_physical_devices('GPU') else 'logical CPU devices'}; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print()
    print(
        "| strategy | best s/step | median s/step | steps/s (best) | images/s (best) "
        "| time / one device |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    reference = min(times["one device"])
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        print(
            f"| {name} | {best:.3f} | {median:.3f} | {1 / best:.2f} "
            f"| {2 * args.batch_size / best:,.0f} | "
            f"{best / reference:.2f} |"
        )


if __name__ == "__main__":
    main()
