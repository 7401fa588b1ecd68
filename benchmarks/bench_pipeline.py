"""Input pipeline throughput against the GPQ train step, on CIFAR-10-sized random data.

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 20] [--batch-size 500] [--step-batch 50]

Prints images/s of `train_dataset` (labeled + unlabeled images per step, augmentation on and off),
of `eval_dataset`, and of full-size GPQ train steps (the default 48-bit config) fed by the pipeline.
The pipeline must stay far above the train step.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpq_keras.data import Split, eval_dataset, train_dataset  # noqa: E402


def cifar_sized_split(seed=0):
    """5,000 labeled and 54,000 unlabeled random uint8 32x32x3 images, as the paper's CIFAR-10
    split."""
    rng = np.random.default_rng(seed)
    x_l = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
    y_l = np.arange(5000) % 10
    x_u = rng.integers(0, 256, (54000, 32, 32, 3), dtype=np.uint8)
    return Split(
        x_query=x_l[:1000],
        y_query=y_l[:1000],
        x_db=x_u,
        y_db=np.zeros(54000, np.int64),
        x_labeled=x_l,
        y_labeled=y_l,
        name="cifar10-sized",
    )


def images_per_second(dataset, steps, images_per_step, warmup=3):
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
    tf.nest.map_structure(lambda t: t.numpy(), batch)
    return steps * images_per_step / (time.perf_counter() - start)


def train_step_rate(split, batch_size, steps):
    from gpq_keras import GPQ, GPQConfig

    dataset, _ = train_dataset(split, batch_size=batch_size, seed=0)
    model = GPQ(config=GPQConfig())
    model.compile()
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * 2 * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="pipeline batches to time")
    parser.add_argument("--batch-size", type=int, default=500, help="per stream, as the original")
    parser.add_argument(
        "--step-batch",
        type=int,
        default=50,
        help="per-stream batch of the timed GPQ train steps (0: skip them)",
    )
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()

    split = cifar_sized_split()
    rows = []
    for augmented in (True, False):
        ds, _ = train_dataset(split, batch_size=args.batch_size, seed=0, augmented=augmented)
        rate = images_per_second(ds, args.steps, 2 * args.batch_size)
        rows.append(
            (f"train_dataset {args.batch_size}+{args.batch_size}, augment={augmented}", rate)
        )
    ds = eval_dataset(split.x_db, batch_size=args.batch_size).repeat()
    rows.append(
        (f"eval_dataset {args.batch_size}", images_per_second(ds, args.steps, args.batch_size))
    )
    if args.step_batch:
        rate = train_step_rate(split, args.step_batch, args.train_steps)
        rows.append((f"GPQ train step (48-bit VGG) {args.step_batch}+{args.step_batch}", rate))

    print(f"{os.cpu_count()} CPU cores visible, TensorFlow {tf.__version__}")
    print(f"{'what':<48} {'images/s':>12}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>12,.0f}")
    if args.step_batch:
        print(f"pipeline / train step: {min(r for _, r in rows[:2]) / rows[-1][1]:,.0f}x")


if __name__ == "__main__":
    main()
