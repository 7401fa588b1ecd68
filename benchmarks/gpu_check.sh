#!/usr/bin/env bash
# GPQ on a GPU machine with JAX and no TensorFlow: trains the full-width model (VGG 64,128,256,512, 48 bits)
# on synthetic data with Keras on JAX, in float32 and in mixed_bfloat16, and prints images/s, peak GPU memory
# and the loss curve of each. Run it as is from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Needs Python with jax (CUDA), keras and numpy; not TensorFlow and not an install of gpq_keras (the
# repository is put on PYTHONPATH). Settings by environment variable (defaults in brackets):
#   GPQ_CHECK_STEPS [300]  GPQ_CHECK_BATCH [500] (per stream)  GPQ_CHECK_FILTERS [64,128,256,512]
#   GPQ_CHECK_PRECISIONS ["float32 mixed_bfloat16"]  GPQ_CHECK_ALLOW_CPU [0] (1: run without a GPU, slowly)
#   PYTHON [python3]
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so that peak memory is the model's, not JAX's preallocation

"${PYTHON:-python3}" - <<'PY'
import os
import sys
import time

missing = []
for package in ("jax", "keras", "numpy"):
    try:
        __import__(package)
    except ImportError:
        missing.append(package)
if missing:
    sys.exit(f"gpu_check: {', '.join(missing)} not importable; install them (pip install 'gpq-keras[jax]' or "
             "pip install keras numpy 'jax[cuda12]')")

import jax
import keras
import numpy as np

from gpq_keras import GPQ, GPQConfig

steps = int(os.environ.get("GPQ_CHECK_STEPS", 300))
batch = int(os.environ.get("GPQ_CHECK_BATCH", 500))
filters = tuple(int(v) for v in os.environ.get("GPQ_CHECK_FILTERS", "64,128,256,512").split(","))
precisions = os.environ.get("GPQ_CHECK_PRECISIONS", "float32 mixed_bfloat16").split()
device = jax.devices()[0]
if device.platform != "gpu" and os.environ.get("GPQ_CHECK_ALLOW_CPU") != "1":
    sys.exit(f"gpu_check: JAX sees no GPU (its first device is {device}); set GPQ_CHECK_ALLOW_CPU=1 to run anyway")
print(f"device: {device.device_kind} ({device.platform}); JAX {jax.__version__}, Keras {keras.__version__} "
      f"on {keras.config.backend()}; TensorFlow imported: {'tensorflow' in sys.modules}")

config = GPQConfig.from_bits(48, filters=filters)
rng = np.random.default_rng(0)
classes = rng.uniform(0, 255, (config.num_classes, 1, 1, 3))  # a colour per class: a learnable signal


def synthetic(n):
    labels = rng.integers(0, config.num_classes, n)
    noise = rng.normal(0, 40, (n, *config.image_shape))
    return np.clip(classes[labels] + noise, 0, 255).astype(np.float32), labels


batches = [(synthetic(batch), synthetic(batch)[0]) for _ in range(8)]  # ((x_l, y), x_u), cycled
warmup = min(5, max(steps - 1, 0))


def peak_bytes():
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


print(f"GPQ 48 bits (M={config.num_subspaces}, K={config.num_codewords}), VGG {','.join(map(str, filters))}, "
      f"{batch} labeled + {batch} unlabeled images of {'x'.join(map(str, config.image_shape))} per step, "
      f"{steps} steps ({warmup} warm-up steps not timed)")
rows = []
for precision in precisions:
    keras.utils.set_random_seed(0)
    model = GPQ(config, dtype=precision)
    model.compile()  # Adam on the original's schedule; XLA (Keras compiles JAX steps)
    curve = []
    start = None
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        (x_l, y), x_u = batches[step % len(batches)]
        logs = model.train_on_batch({"labeled": x_l, "unlabeled": x_u}, y, return_dict=True)  # synchronous
        curve.append(float(logs["loss"]))
        if not np.isfinite(curve[-1]):
            sys.exit(f"gpu_check: {precision}: non-finite loss {curve[-1]} at step {step}")
    seconds = time.perf_counter() - start
    rate = 2 * batch * (steps - warmup) / seconds
    peak = peak_bytes()
    rows.append((precision, rate, seconds / (steps - warmup), peak, curve))
    every = max(1, steps // 10)
    shown = sorted(set(range(0, steps, every)) | {steps - 1})
    print(f"\n{precision}: loss at steps " + " ".join(f"{i}:{curve[i]:.3f}" for i in shown))

print("\n| precision | images/s | s/step | peak memory (GiB) | first loss | last loss (mean of 10) |")
print("|---|---:|---:|---:|---:|---:|")
for precision, rate, per_step, peak, curve in rows:
    memory = "n/a" if peak is None else f"{peak / 2**30:.2f}"
    print(f"| {precision} | {rate:,.0f} | {per_step:.4f} | {memory} | {curve[0]:.4f} | {np.mean(curve[-10:]):.4f} |")
PY
