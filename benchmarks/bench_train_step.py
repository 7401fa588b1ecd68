"""Train-step throughput: GPQ's full objective against a plain backbone forward+backward.

Both run on the same labeled and unlabeled batches (two backbone calls, batch norm in training mode, Adam),
so the difference is the cost of GPQ's heads and losses. Run by hand:

    .venv/bin/python benchmarks/bench_train_step.py [--batch-size 500] [--steps 3]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from gpq_keras import GPQ, GPQConfig


def _time(steps, **candidates):
    """Fastest step time of each candidate, runs interleaved so load changes hit all alike."""
    for step in candidates.values():
        step()  # trace and warm up
    best = {name: float("inf") for name in candidates}
    for _ in range(steps):
        for name, step in candidates.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=500, help="per stream (default 500, the original's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bits", type=int, default=48)
    args = parser.parse_args()

    config = GPQConfig.from_bits(args.bits)
    rng = np.random.default_rng(0)
    x_l = tf.constant(rng.normal(size=(args.batch_size, *config.image_shape)).astype(np.float32))
    x_u = tf.constant(rng.normal(size=(args.batch_size, *config.image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, config.num_classes, args.batch_size))

    model = GPQ(config)
    model.compile()
    gpq_step = tf.function(lambda: model.train_step(({"labeled": x_l, "unlabeled": x_u}, y)))

    backbone = GPQ(config).backbone
    optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
    optimizer.build(backbone.trainable_variables)

    @tf.function
    def plain_step():
        with tf.GradientTape() as tape:
            loss = (tf.reduce_mean(tf.square(backbone(x_l, training=True)))
                    + tf.reduce_mean(tf.square(backbone(x_u, training=True))))
        optimizer.apply(tape.gradient(loss, backbone.trainable_variables), backbone.trainable_variables)
        return loss

    def gpq_step_value():
        return gpq_step()["loss"].numpy()

    def plain_step_value():
        return plain_step().numpy()

    images = 2 * args.batch_size
    best = _time(args.steps, plain=plain_step_value, gpq=gpq_step_value)
    plain, full = best["plain"], best["gpq"]
    print(f"| step ({args.batch_size} labeled + {args.batch_size} unlabeled, {config.bits} bits) "
          "| s/step (best) | images/s | vs backbone |")
    print("|---|---:|---:|---:|")
    print(f"| backbone forward+backward | {plain:.3f} | {images / plain:.1f} | 1.00 |")
    print(f"| GPQ train_step | {full:.3f} | {images / full:.1f} | {full / plain:.3f} |")


if __name__ == "__main__":
    main()
