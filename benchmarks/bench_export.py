"""Export: encode images/s of ONNX Runtime and TFLite (LiteRT) against the Keras model on TensorFlow
and the SavedModel's signature, and how close their outputs are.

    .venv/bin/python benchmarks/bench_export.py [--rounds 5] [--batches 1,64] [--threads N]
        [--models default,demo] [--min-seconds 0.3] [--out FILE.md]

Models: `GPQ(GPQConfig.from_bits(48, image_shape=(32, 32, 3), filters=...))` (M=12, K=16, d=12),
random weights (the time does not depend on them): `default`, the original's VGG widths
(64, 128, 256, 512); `demo`, `make demo`'s narrow widths (16, 32, 64, 64). Each is exported once
(`gpq_keras.export.export_model`, seconds reported) as a SavedModel, an ONNX and a TFLite file.

Candidates, each giving features and codes of one uint8 batch of random pixels:

- `keras encode`: `model.encode(x)` (its tf.data input and `predict`) and
  `ProductQuantizer.encode` on the features, what `gpq encode` runs;
- `keras call`: the compiled `tf.function` of the model's own graph on a tensor, features and codes
  in TensorFlow as the export computes them (the SavedModel's function before it is saved);
- `SavedModel`: `tf.saved_model.load(...).signatures["serving_default"](images=x)`;
- `ONNX Runtime`: `InferenceSession(path).run(None, {"images": x})`, CPU provider,
  `--threads` intra-op threads;
- `TFLite (LiteRT)`: `ai_edge_litert.interpreter.Interpreter(model_path, num_threads=--threads)`'s
  `serving_default` signature runner (its default XNNPACK delegate), one interpreter per batch size.

TensorFlow runs with `--threads` intra-op threads too. Each candidate is warmed up (two calls), then
rounds interleave the candidates (round r runs each once, the order rotated per round, so load
changes hit all alike); one run of a candidate is as many calls as fill `--min-seconds` (counted
at the warm-up), timed together. images/s = batch / seconds per call: best and median over the
rounds. Parity: on one batch of 64, the largest relative feature error per item
(|f - f_keras| / |f_keras|) and the number of codes differing from `keras encode`'s. Prints
Markdown tables; `--out` also writes them to a file (atomically).
"""

import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_line  # noqa: E402

from gpq_keras import GPQ, GPQConfig  # noqa: E402
from gpq_keras.files import atomic_path  # noqa: E402

WIDTHS = {"default": (64, 128, 256, 512), "demo": (16, 32, 64, 64)}
SIZE = 32


def header(threads):
    import onnxruntime
    import tensorflow as tf

    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # not installed as a distribution
        litert = "?"
    return (
        f"{cpu_line()}, {threads} threads; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, onnxruntime {onnxruntime.__version__}, ai-edge-litert "
        f"{litert}; {datetime.date.today().isoformat()}"
    )


class Candidate:
    """One way to encode a batch: `run(x) -> (features, codes)`, timed by the rounds."""

    def __init__(self, model_name, runtime, batch, run, images):
        self.model_name, self.runtime, self.batch = model_name, runtime, batch
        self.run, self.images = run, images
        self.calls = 1
        self.seconds = []  # per call, one entry per round

    def warm_up(self, min_seconds):
        self.run(self.images)
        start = time.perf_counter()
        self.run(self.images)
        once = max(time.perf_counter() - start, 1e-6)
        self.calls = max(1, math.ceil(min_seconds / once))

    def run_round(self):
        start = time.perf_counter()
        for _ in range(self.calls):
            self.run(self.images)
        self.seconds.append((time.perf_counter() - start) / self.calls)

    def rates(self):
        rates = [self.batch / s for s in self.seconds]
        return max(rates), statistics.median(rates)


def build(model_name, folder, threads):
    """(model, {runtime: a function batch -> run(x)}, export seconds {format: s})."""
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from gpq_keras.export import _assignment, _serving_outputs, export_model
    from gpq_keras.retrieval import ProductQuantizer

    config = GPQConfig.from_bits(48, image_shape=(SIZE, SIZE, 3), filters=WIDTHS[model_name])
    model = GPQ(config)
    pq = ProductQuantizer.from_model(model)
    seconds = {}
    paths = {}
    for fmt, name in (("savedmodel", "saved"), ("onnx", "gpq.onnx"), ("tflite", "gpq.tflite")):
        start = time.perf_counter()
        paths[fmt] = export_model(model, os.path.join(folder, model_name, name), fmt)[0]
        seconds[fmt] = time.perf_counter() - start

    def keras_encode(x):
        features = model.encode(x, batch_size=len(x))
        return features, pq.encode(features)

    assign = _assignment(model, None)
    graph = tf.function(
        lambda x: _serving_outputs(model, assign, x),
        input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8)],
    )

    def keras_call(x):
        out = graph(tf.constant(x))
        return out["features"].numpy(), out["codes"].numpy()

    signature = tf.saved_model.load(paths["savedmodel"]).signatures["serving_default"]

    def saved_model(x):
        out = signature(images=tf.constant(x))
        return out["features"].numpy(), out["codes"].numpy()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        paths["onnx"], options, providers=["CPUExecutionProvider"]
    )

    def onnx_runtime(x):
        return tuple(session.run(["features", "codes"], {"images": x}))

    def tflite(batch):
        runner = Interpreter(model_path=paths["tflite"], num_threads=threads).get_signature_runner(
            "serving_default"
        )

        def run(x):
            out = runner(images=x)
            return out["features"], out["codes"]

        return run

    runtimes = {
        "keras encode": lambda batch: keras_encode,
        "keras call": lambda batch: keras_call,
        "SavedModel": lambda batch: saved_model,
        "ONNX Runtime": lambda batch: onnx_runtime,
        "TFLite (LiteRT)": tflite,
    }
    return model, runtimes, seconds


def parity(runtimes, images):
    """{runtime: (max relative feature error, differing codes)} against `keras encode`."""
    features, codes = runtimes["keras encode"](len(images))(images)
    out = {}
    for name, make in runtimes.items():
        f, c = make(len(images))(images)
        error = np.linalg.norm(f - features, axis=1) / np.linalg.norm(features, axis=1)
        out[name] = (float(error.max()), int((np.asarray(c) != codes).sum()), codes.size)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", default="default,demo")
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    models = args.models.split(",")
    rng = np.random.default_rng(0)
    candidates, exports, parities = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_export_") as folder:
        for model_name in models:
            _, runtimes, exports[model_name] = build(model_name, folder, args.threads)
            parities[model_name] = parity(
                runtimes, rng.integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
            )
            for batch in batches:
                images = rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
                for runtime, make in runtimes.items():
                    candidate = Candidate(model_name, runtime, batch, make(batch), images)
                    candidate.warm_up(args.min_seconds)
                    candidates.append(candidate)
        for r in range(args.rounds):
            shift = r % len(candidates)
            for candidate in candidates[shift:] + candidates[:shift]:
                candidate.run_round()
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    lines = [
        f"Export: encode images/s ({header(args.threads)}); VGG at {SIZE}x{SIZE}, 48 bits, "
        f"best / median of {args.rounds} interleaved rounds.",
        "",
        "| VGG widths | batch | runtime | images/s best / median | median vs keras encode |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for model_name in models:
        for batch in batches:
            rows = [c for c in candidates if (c.model_name, c.batch) == (model_name, batch)]
            base = next(c for c in rows if c.runtime == "keras encode").rates()[1]
            for c in rows:
                best, median = c.rates()
                lines.append(
                    f"| {model_name} {WIDTHS[model_name]} | {batch} | {c.runtime} | "
                    f"{best:,.0f} / {median:,.0f} | {median / base:.1f}x |"
                )
    lines += [
        "",
        "| VGG widths | export seconds: SavedModel / ONNX / TFLite | runtime | max feature rel. "
        "error | codes differing |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for model_name in models:
        seconds = " / ".join(
            f"{exports[model_name][f]:.1f}" for f in ("savedmodel", "onnx", "tflite")
        )
        for runtime, (error, differing, total) in parities[model_name].items():
            if runtime == "keras encode":
                continue
            lines.append(
                f"| {model_name} | {seconds} | {runtime} | {error:.1e} | {differing} of {total} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
