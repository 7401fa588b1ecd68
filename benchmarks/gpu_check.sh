#!/usr/bin/env bash
# GPQ on a GPU machine with JAX and no TensorFlow: trains the full-width model (VGG 64,128,256,512, 48 bits)
# on synthetic data with Keras on JAX, in float32 and in mixed_bfloat16, and prints images/s, peak GPU memory
# and the loss curve of each. On a machine with several GPUs it adds a float32 row on all of them with
# `--strategy data-parallel` (keras.distribution.DataParallel, the same global batch split over the GPUs),
# whose losses must follow the one-GPU float32 row. Run it as is from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Needs Python with jax (CUDA), keras and numpy; not TensorFlow and not an install of gpq_keras (the
# repository is put on PYTHONPATH). Settings by environment variable (defaults in brackets):
#   GPQ_CHECK_STEPS [300]  GPQ_CHECK_BATCH [500] (per stream)  GPQ_CHECK_FILTERS [64,128,256,512]
#   GPQ_CHECK_PRECISIONS ["float32 mixed_bfloat16"]  GPQ_CHECK_ALLOW_CPU [0] (1: run without a GPU, slowly)
#   GPQ_CHECK_DATA_PARALLEL [1] (0: no multi-GPU row; it needs more than one device and a batch they split)
#   PYTHON [python3]
# CUDA_VISIBLE_DEVICES chooses the GPUs. (On CPU, XLA_FLAGS=--xla_force_host_platform_device_count=2 with
# GPQ_CHECK_ALLOW_CPU=1 runs the multi-device row on two host devices.)
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
data_parallel = os.environ.get("GPQ_CHECK_DATA_PARALLEL", "1") == "1" and jax.device_count() > 1
device = jax.devices()[0]
if device.platform != "gpu" and os.environ.get("GPQ_CHECK_ALLOW_CPU") != "1":
    sys.exit(f"gpu_check: JAX sees no GPU (its first device is {device}); set GPQ_CHECK_ALLOW_CPU=1 to run anyway")
print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} visible; JAX {jax.__version__}, "
      f"Keras {keras.__version__} on {keras.config.backend()}; TensorFlow imported: {'tensorflow' in sys.modules}")
if data_parallel and batch % jax.device_count():
    sys.exit(f"gpu_check: GPQ_CHECK_BATCH={batch} does not split over {jax.device_count()} devices; use a multiple "
             "of it, or GPQ_CHECK_DATA_PARALLEL=0")

config = GPQConfig.from_bits(48, filters=filters)
rng = np.random.default_rng(0)
classes = rng.uniform(0, 255, (config.num_classes, 1, 1, 3))  # a colour per class: a learnable signal


def synthetic(n):
    labels = rng.integers(0, config.num_classes, n)
    noise = rng.normal(0, 40, (n, *config.image_shape))
    return np.clip(classes[labels] + noise, 0, 255).astype(np.float32), labels


batches = [(synthetic(batch), synthetic(batch)[0]) for _ in range(8)]  # ((x_l, y), x_u), cycled
warmup = min(5, max(steps - 1, 0))


def peak_bytes(devices=(device,)):
    """The largest peak memory of `devices` (per device), None where JAX does not report it."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return None if None in peaks else max(peaks)


print(f"GPQ 48 bits (M={config.num_subspaces}, K={config.num_codewords}), VGG {','.join(map(str, filters))}, "
      f"{batch} labeled + {batch} unlabeled images of {'x'.join(map(str, config.image_shape))} per step, "
      f"{steps} steps ({warmup} warm-up steps not timed)")
rows = []
runs = [(precision, precision, None) for precision in precisions]
if data_parallel:  # last: make_strategy sets Keras' distribution for the rest of the process
    runs.append((f"float32, data-parallel on {jax.device_count()}", "float32", "data-parallel"))
for name, precision, strategy in runs:
    if strategy:
        from gpq_keras.distribute import make_strategy

        make_strategy(strategy)  # weights replicated on every device, each batch split over them
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
            sys.exit(f"gpu_check: {name}: non-finite loss {curve[-1]} at step {step}")
    seconds = time.perf_counter() - start
    rate = 2 * batch * (steps - warmup) / seconds
    # per device; the data-parallel row's from the devices the one-device rows left untouched
    peak = peak_bytes(jax.devices()[1:] if strategy else (device,))
    rows.append((name, rate, seconds / (steps - warmup), peak, curve))
    every = max(1, steps // 10)
    shown = sorted(set(range(0, steps, every)) | {steps - 1})
    print(f"\n{name}: loss at steps " + " ".join(f"{i}:{curve[i]:.3f}" for i in shown))

print("\n| precision | images/s | s/step | peak memory per GPU (GiB) | first loss | last loss (mean of 10) |")
print("|---|---:|---:|---:|---:|---:|")
for name, rate, per_step, peak, curve in rows:
    memory = "n/a" if peak is None else f"{peak / 2**30:.2f}"
    print(f"| {name} | {rate:,.0f} | {per_step:.4f} | {memory} | {curve[0]:.4f} | {np.mean(curve[-10:]):.4f} |")
curves = {name: curve for name, _, _, _, curve in rows}
if data_parallel and "float32" in curves:
    one, several = curves["float32"], curves[runs[-1][0]]
    first = min(10, steps)
    gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one[:first], several[:first]))
    print(f"\ndata-parallel vs one device, float32: largest relative loss difference over the first {first} "
          f"steps {gap:.1e} (the same steps: expect float32 round-off, well under 1e-3)")
PY
