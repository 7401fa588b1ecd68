"""What this Python has: versions, the Keras backend, the extras, the CPU's features, the GPUs.

`describe()` answers from package metadata (`importlib.metadata`), `platform`, the environment and
`/proc`, so it imports no backend, not even Keras, and takes a fraction of a second: `gpq doctor`
prints it and every run.json records its `versions` (`gpq_keras.training.new_record`). The devices
the backend sees need the backend itself: `describe(devices=True)` imports Keras (and so the
backend) to list them, and, on TensorFlow, each GPU's memory-growth setting.

A module already imported reports its own `__version__`, the others their distribution's version,
so a run.json states the versions that ran.

    from gpq_keras.environment import describe
    facts = describe()
    facts["backend"], facts["versions"], facts["cpu"]["avx2"]
"""

import glob
import importlib.metadata
import json
import os
import platform
import sys

import gpq_keras

BACKENDS = ("tensorflow", "jax", "torch")

# name -> (module, the distributions it may come from, in the order they are tried). The name is
# what `describe()["packages"]` is keyed by; a distribution not listed is found through
# `importlib.metadata.packages_distributions()` (slower: it reads every installed distribution).
PACKAGES = {
    "keras": ("keras", ("keras", "keras-nightly")),
    "tensorflow": (
        "tensorflow",
        (
            "tensorflow",
            "tensorflow-cpu",
            "tensorflow-gpu",
            "tensorflow-intel",
            "tensorflow-macos",
            "tf-nightly",
            "tf-nightly-cpu",
        ),
    ),
    "jax": ("jax", ("jax",)),
    "torch": ("torch", ("torch",)),
    "numpy": ("numpy", ("numpy",)),
    "faiss": ("faiss", ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")),
    "scikit-learn": ("sklearn", ("scikit-learn",)),
    "keras-hub": ("keras_hub", ("keras-hub", "keras-hub-nightly")),
    "starlette": ("starlette", ("starlette",)),
    "uvicorn": ("uvicorn", ("uvicorn",)),
    "python-multipart": ("python_multipart", ("python-multipart",)),
    "onnx": ("onnx", ("onnx",)),
    "tf2onnx": ("tf2onnx", ("tf2onnx",)),
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "ai-edge-litert": ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
}

# setup.cfg's extras -> the PACKAGES each needs.
EXTRAS = {
    "faiss": ("faiss",),
    "viz": ("scikit-learn",),
    "jax": ("jax",),
    "torch": ("torch",),
    "hub": ("keras-hub",),
    "serve": ("starlette", "uvicorn", "python-multipart"),
    "onnx": ("onnx", "tf2onnx", "onnxruntime"),
    "tflite": ("ai-edge-litert",),
}

# The environment variables that change what a backend does with the devices, reported when set.
ENVIRONMENT_VARIABLES = (
    "KERAS_BACKEND",
    "KERAS_HOME",
    "CUDA_VISIBLE_DEVICES",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_ENABLE_ONEDNN_OPTS",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "PYTORCH_CUDA_ALLOC_CONF",
)

# Each backend's variables for GPU memory (the `memory` line of `gpq doctor`).
MEMORY_VARIABLES = {
    "tensorflow": ("TF_FORCE_GPU_ALLOW_GROWTH",),
    "jax": (
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "XLA_PYTHON_CLIENT_ALLOCATOR",
    ),
    "torch": ("PYTORCH_CUDA_ALLOC_CONF",),
}

CPUINFO = "/proc/cpuinfo"
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def installed(name):
    """(distribution, version) of PACKAGES' `name`, or None when it is not installed. A module
    already imported gives its own `__version__`."""
    module, distributions = PACKAGES.get(name, (name, (name,)))
    loaded = sys.modules.get(module)
    for distribution in distributions:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        return distribution, getattr(loaded, "__version__", None) or version
    for distribution in _packages_distributions().get(module, ()):
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        return distribution, getattr(loaded, "__version__", None) or version
    if getattr(loaded, "__version__", None):  # imported from a path, not installed
        return module, loaded.__version__
    return None


_DISTRIBUTIONS = []


def _packages_distributions():
    if not _DISTRIBUTIONS:
        _DISTRIBUTIONS.append(importlib.metadata.packages_distributions())
    return _DISTRIBUTIONS[0]


def keras_backend():
    """(backend, where it was chosen): Keras' own choice, read as `keras.config` reads it (the
    `KERAS_BACKEND` variable, else `backend` in KERAS_HOME's or ~/.keras' keras.json, else
    tensorflow) without importing Keras; `keras.config.backend()` once Keras is imported."""
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    path = os.path.expanduser(os.path.join(home, "keras.json"))
    backend, source = "tensorflow", "the default"
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        config = {}
    if isinstance(config, dict) and config.get("backend"):
        backend, source = str(config["backend"]), path
    if os.environ.get("KERAS_BACKEND"):
        backend, source = os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        chosen = keras.config.backend()
        if chosen != backend:
            backend, source = chosen, "keras.config"
    return backend, source


def parse_cpuinfo(text):
    """{"model": the first model name or None, "flags": set} of a /proc/cpuinfo text (x86's `flags`,
    Arm's `Features`)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip() or None
    return {"model": model, "flags": flags}


def cpu_features(cpuinfo=None):
    """The CPU features the kernels care about: {"machine", "model", "cores", "usable_cores",
    "avx2", "avx512", "amx", "bfloat16"}. A feature is True/False from the flags of `cpuinfo` (a
    text; default: /proc/cpuinfo), None (unknown) where there are none (not Linux)."""
    if cpuinfo is None:
        try:
            with open(CPUINFO) as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    parsed = parse_cpuinfo(cpuinfo)
    flags = parsed["flags"]
    known = bool(flags)

    def has(*names):
        return any(name in flags for name in names) if known else None

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine": platform.machine(),
        "model": parsed["model"],
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "avx2": has("avx2"),
        "avx512": has("avx512f"),
        "amx": has("amx_tile", "amx_bf16", "amx_int8"),
        "bfloat16": has("avx512_bf16", "amx_bf16", "bf16"),
    }


def nvidia_gpus(root=NVIDIA_GPUS):
    """The models of the GPUs the NVIDIA driver lists under `root`, or None without the driver
    (or off Linux): what the machine has, whatever a backend sees."""
    if not os.path.isdir(root):
        return None
    models = []
    for path in sorted(glob.glob(os.path.join(root, "*", "information"))):
        model = "unknown model"
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key.strip() == "Model":
                        model = value.strip()
                        break
        except OSError:
            pass
        models.append(model)
    return models


def backend_devices(backend):
    """(devices, memory growth) the backend sees: run.json's device names, and on TensorFlow
    {GPU: memory growth} (else None). Imports Keras and the backend."""
    import keras

    if backend == "tensorflow":
        import tensorflow as tf

        devices = [device.name for device in tf.config.list_logical_devices()]
        growth = {
            gpu.name.removeprefix("/physical_device:"): bool(
                tf.config.experimental.get_memory_growth(gpu)
            )
            for gpu in tf.config.list_physical_devices("GPU")
        }
        return devices, growth
    if backend == "torch":  # Keras' distribution API has no torch implementation
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return ["cpu:0"] + [f"cuda:{i}" for i in range(gpus)], None
    return [str(device) for device in keras.distribution.list_devices()], None


def describe(devices=False):
    """This Python's facts as a JSON-ready dict.

    Keys: `python`, `implementation`, `platform`, `executable`; `gpq_keras`, `keras`; `backend`
    (Keras', `keras_backend`), `backend_source`, `backend_version`; `versions` (run.json's:
    gpq_keras, keras, numpy, python and the backend's); `packages` ({PACKAGES name: version or
    None}), `distributions` (the distribution of those whose name differs, e.g. tensorflow-cpu);
    `backends` ({tensorflow, jax, torch: version or None}); `extras` ({setup.cfg extra: all of it
    installed}); `cpu` (`cpu_features`), `gpus` (`nvidia_gpus`), `environment` (the
    ENVIRONMENT_VARIABLES that are set); `devices` and `memory_growth` (`backend_devices`; None
    unless `devices`).

    Args:
        devices: bool, default False. Also list the devices the backend sees, which imports Keras
            and the backend (seconds for TensorFlow).
    """
    backend, source = keras_backend()
    found = {name: installed(name) for name in PACKAGES}
    if backend not in found:
        found[backend] = installed(backend)
    packages = {name: None if got is None else got[1] for name, got in found.items()}
    keras_version = packages.pop("keras")
    listed, growth = backend_devices(backend) if devices else (None, None)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "gpq_keras": gpq_keras.__version__,
        "keras": keras_version,
        "backend": backend,
        "backend_source": source,
        "backend_version": packages.get(backend),
        "versions": {
            "gpq_keras": gpq_keras.__version__,
            "keras": keras_version,
            "numpy": packages["numpy"],
            "python": platform.python_version(),
            backend: packages.get(backend),
        },
        "packages": packages,
        "distributions": {
            name: got[0] for name, got in found.items() if got is not None and got[0] != name
        },
        "backends": {name: packages[name] for name in BACKENDS},
        "extras": {
            extra: all(packages[name] is not None for name in names)
            for extra, names in EXTRAS.items()
        },
        "cpu": cpu_features(),
        "gpus": nvidia_gpus(),
        "environment": {
            name: os.environ[name] for name in ENVIRONMENT_VARIABLES if name in os.environ
        },
        "devices": listed,
        "memory_growth": growth,
    }
