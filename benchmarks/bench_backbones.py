"""Backbones: parameters, train-step and encode images/s of each image backbone, and how fast GPQ's
head trains on embeddings (`backbone="mlp"`) to a target mAP.

    .venv/bin/python benchmarks/bench_backbones.py [--rounds 3] [--app-rounds N] [--batch-size 8]
        [--vgg-batch-size 64] [--encode-images 32] [--vgg-encode-images 256] [--steps 2]
        [--backbones resnet50,efficientnetv2_b0,convnext_tiny,mobilenet_v3_small,vgg,mlp]
        [--target-map 0.4] [--eval-every 25] [--max-steps 1000] [--out FILE.md]

Image backbones, each in `GPQ(config, backbone=NAME)` on a 48-bit config (M=12, K=16, d=12, 10
classes), float32, `compile()` with its defaults (the way `gpq train` compiles: on a CPU Keras'
`jit_compile="auto"` is off):

- the four `keras.applications` backbones at 224x224, `weights=None` (random; ImageNet weights cost
  the same time), `--batch-size` labeled + as many unlabeled images per step;
- `vgg`, the original's VGG (widths 64-128-256-512) at 32x32, `--vgg-batch-size` + as many.

Columns: parameters of the whole GPQ model and of its backbone; the first train step (tracing the
step function: its time is reported, not counted); train images/s = 2 x batch / (seconds per
step), one step being `train_on_batch` on the same NumPy batches of random pixels 0..255 (as
`bench_train_step.py` times it: GPQ's full step, two backbone calls with training-mode batch norm,
the three losses, Adam), `--steps` steps per round; encode images/s = `--encode-images` (VGG:
`--vgg-encode-images`) / the seconds of one `model.encode(x, batch_size=that many)` (one batch,
its tf.data input and `predict`), after one warm-up call.

Embedding head (`mlp`): `GPQ(config, backbone="mlp")`, 16 bits (M=4, K=16, d=12, learning rate
1e-2) on `tests/data_fakes.signal_embeddings` (500 labeled, 2,000 unlabeled vectors of 128 dims,
200 queries), batches of 100 + 100 from `train_input`, as `tests/test_embeddings_vs_pq.py` trains
it. Every `--eval-every` steps the unlabeled database is encoded, indexed (`PQIndex`) and searched
whole by the queries, and scored with `metrics.evaluate_ranking` (mAP over the whole database);
training stops when the mAP first reaches `--target-map`. The train clock (steps, the input's
batches included, the first step's tracing included) excludes the evaluations, whose time is
reported on its own; steps/s leaves out the first step.

Rounds interleave the candidates (round r runs each once, the order rotated per round, so load
changes hit all alike; one `mlp` run is a whole run to the target from a fresh model, its initial
weights drawn anew: Keras' seed is set once, at the start, as setting it again retraces every step
function built so far); best and median over the rounds. `--app-rounds` gives the 224x224 models
fewer rounds (they take part in the first N only). Prints Markdown tables; `--out` also writes
them to a file (atomically).
"""

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from data_fakes import signal_embeddings  # noqa: E402
from machine import cpu_line  # noqa: E402

from gpq_keras import GPQ, GPQConfig, metrics  # noqa: E402
from gpq_keras.backbones import APPLICATIONS  # noqa: E402
from gpq_keras.data import train_input  # noqa: E402
from gpq_keras.data.split import Split  # noqa: E402
from gpq_keras.files import atomic_path  # noqa: E402
from gpq_keras.retrieval import PQIndex  # noqa: E402

APP_SIZE = 224
VGG_SIZE = 32
ALL = (*APPLICATIONS, "vgg", "mlp")


def header():
    import tensorflow as tf

    return (
        f"{cpu_line()}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, backend {keras.config.backend()}; "
        f"{datetime.date.today().isoformat()}"
    )


class ImageCandidate:
    """One image backbone in GPQ: a train step and an encode, timed by the rounds."""

    def __init__(self, name, batch_size, encode_images):
        size = APP_SIZE if name in APPLICATIONS else VGG_SIZE
        self.name, self.size = name, size
        self.batch_size, self.encode_images = batch_size, encode_images
        config = GPQConfig.from_bits(48, image_shape=(size, size, 3))
        self.model = GPQ(config, backbone=name)
        self.model.compile()
        rng = np.random.default_rng(0)
        shape = (batch_size, size, size, 3)
        self.inputs = {
            "labeled": rng.uniform(0, 255, shape).astype(np.float32),
            "unlabeled": rng.uniform(0, 255, shape).astype(np.float32),
        }
        self.labels = rng.integers(0, config.num_classes, batch_size)
        self.images = rng.uniform(0, 255, (encode_images, size, size, 3)).astype(np.float32)
        self.params = (self.model.count_params(), self.model.backbone.count_params())
        self.train, self.encode = [], []  # seconds per step, seconds per encode call
        start = time.perf_counter()
        loss = self.step()
        self.first_step = time.perf_counter() - start
        if not np.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss} on the warm-up step")
        start = time.perf_counter()
        self.encode_call()
        self.first_encode = time.perf_counter() - start

    def step(self):
        return float(self.model.train_on_batch(self.inputs, self.labels, return_dict=True)["loss"])

    def encode_call(self):
        return self.model.encode(self.images, batch_size=self.encode_images)

    def run_round(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.train.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        self.encode_call()
        self.encode.append(time.perf_counter() - start)

    def row(self):
        images = 2 * self.batch_size
        train = [images / t for t in self.train]
        encode = [self.encode_images / t for t in self.encode]
        total, backbone = self.params
        return (
            f"| {self.name} | {self.size}x{self.size} | {total / 1e6:.2f} M | "
            f"{backbone / 1e6:.2f} M | {self.batch_size} + {self.batch_size} | "
            f"{self.first_step:.1f} | {max(train):,.1f} / {statistics.median(train):,.1f} | "
            f"{self.encode_images} | {max(encode):,.1f} / {statistics.median(encode):,.1f} | "
            f"{len(self.train)} |"
        )


class EmbeddingCandidate:
    """GPQ on embeddings (`backbone="mlp"`), trained from scratch to `target` mAP in each round."""

    name = "mlp"

    def __init__(self, target, eval_every, max_steps, batch_size=100):
        self.target, self.eval_every, self.max_steps = target, eval_every, max_steps
        self.batch_size = batch_size
        x_l, y_l, x_u, y_u, x_q, y_q = signal_embeddings(seed=0)
        self.database, self.queries = (x_u, y_u), (x_q, y_q)
        self.split = Split(x_q, y_q, x_u, y_u, x_labeled=x_l, y_labeled=y_l, name="signal")
        self.config = GPQConfig(
            num_subspaces=4,
            num_codewords=16,
            subspace_dim=12,
            num_classes=10,
            input_dim=x_u.shape[1],
            learning_rate=1e-2,
        )
        self.runs = []  # dicts, one a round
        self.params = None

    def evaluate(self, model):
        """mAP of the queries over the whole unlabeled database, searched in a PQIndex (one encode
        call of one batch for both: one trace of the predict step per model)."""
        (x_u, y_u), (x_q, y_q) = self.database, self.queries
        features = model.encode(np.concatenate([x_u, x_q]), batch_size=len(x_u) + len(x_q))
        index = PQIndex.from_model(model)
        index.add(features[: len(x_u)])
        _, ids = index.search(features[len(x_u) :], len(x_u))
        return metrics.evaluate_ranking(ids, y_q, y_u, precision_at=(10,))["mAP"]

    def run_round(self, steps=None):
        model = GPQ(self.config, backbone="mlp")
        model.compile()
        self.params = (model.count_params(), model.backbone.count_params())
        dataset, _ = train_input(self.split, batch_size=self.batch_size, seed=0)
        batches = iter(dataset)
        train, evaluation, evaluations, step, first, reached = 0.0, 0.0, 0, 0, None, None
        score = float("nan")
        while step < self.max_steps:
            start = time.perf_counter()
            x, y = next(batches)
            model.train_on_batch(x, y)
            elapsed = time.perf_counter() - start
            train += elapsed
            step += 1
            if first is None:
                first = elapsed
            if step % self.eval_every == 0:
                start = time.perf_counter()
                score = self.evaluate(model)
                evaluation += time.perf_counter() - start
                evaluations += 1
                if score >= self.target:
                    reached = step
                    break
        self.runs.append(
            {
                "steps": step,
                "reached": reached,
                "map": score,
                "train": train,
                "first": first,
                "steps_per_s": (step - 1) / (train - first) if step > 1 else float("nan"),
                "eval": evaluation,
                "evaluations": evaluations,
            }
        )

    def row(self):
        def cell(key, fmt):
            values = [run[key] for run in self.runs]
            best = max(values) if key == "steps_per_s" else min(values)
            return f"{format(best, fmt)} / {format(statistics.median(values), fmt)}"

        reached = [run["reached"] for run in self.runs]
        steps = (
            ", ".join(str(r) for r in reached)
            if all(r is not None for r in reached)
            else f"not reached in {self.max_steps} ({', '.join(str(r) for r in reached)})"
        )
        evals = self.runs[0]["evaluations"]
        maps = ", ".join(f"{run['map']:.3f}" for run in self.runs)
        return (
            f"| mlp, {self.config.input_dim} -> 512 -> {self.config.feature_dim} | "
            f"{self.params[0]:,} | {self.params[1]:,} | {self.batch_size} + {self.batch_size} | "
            f"{cell('steps_per_s', ',.0f')} | {cell('first', '.2f')} | {steps} | "
            f"{cell('train', '.2f')} | {cell('eval', '.2f')} ({evals} x) | "
            f"{maps} |"
        )


def tables(args, images, embedding):
    lines = [f"Backbones (`bench_backbones.py`): {header()}", ""]
    if images:
        app_note = (
            f"; the 224x224 models in the first {args.app_rounds} rounds only"
            if args.app_rounds < args.rounds and any(c.size == APP_SIZE for c in images)
            else ""
        )
        lines += [
            f"Image backbones in GPQ, 48 bits, float32, `compile()` defaults (no XLA on a CPU); "
            f"best / median of {args.rounds} interleaved rounds{app_note}, {args.steps} train "
            f"steps a round after one warm-up step; random weights (`weights=None`).",
            "",
            "| backbone | input | params, GPQ | params, backbone | batch (labeled + unlabeled) | "
            "first step (s) | train images/s | encode batch | encode images/s | rounds |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[c.row() for c in images],
            "",
        ]
    if embedding is not None:
        lines += [
            f'Embedding head: `GPQ(config, backbone="mlp")`, 16 bits (M=4, K=16, d=12), '
            f"learning rate 1e-2, on `signal_embeddings` (500 labeled + 2,000 unlabeled of 128 "
            f"dims, 200 queries); mAP over the 2,000 (`PQIndex.search` + `evaluate_ranking`) "
            f"every {embedding.eval_every} steps until >= {embedding.target}; best / median of "
            f"{len(embedding.runs)} runs from scratch, interleaved with the rounds above.",
            "",
            "| model | params, GPQ | params, backbone | batch | train steps/s | first step (s) | "
            f"steps to mAP >= {embedding.target} | train s to it | evaluation s | mAP reached |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            embedding.row(),
            "",
        ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--app-rounds", type=int, default=None, help="rounds of the 224x224 models (<= --rounds)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="per stream, 224x224 models")
    parser.add_argument("--vgg-batch-size", type=int, default=64, help="per stream, VGG 32x32")
    parser.add_argument("--encode-images", type=int, default=32, help="224x224 models")
    parser.add_argument("--vgg-encode-images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="train steps per round")
    parser.add_argument("--backbones", default=",".join(ALL), help=f"subset of {', '.join(ALL)}")
    parser.add_argument("--target-map", type=float, default=0.4)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        parser.error(f"unknown backbones {unknown}; choose from {list(ALL)}")
    args.app_rounds = args.rounds if args.app_rounds is None else min(args.app_rounds, args.rounds)

    began = time.perf_counter()
    # Once, before any model: setting Keras' seed again would retrace every tf.function built so
    # far on its next call (TensorFlow keys its traces on the global seed), seconds per model.
    keras.utils.set_random_seed(0)
    candidates = []
    for name in names:
        start = time.perf_counter()
        if name == "mlp":
            candidates.append(EmbeddingCandidate(args.target_map, args.eval_every, args.max_steps))
        elif name == "vgg":
            candidates.append(ImageCandidate(name, args.vgg_batch_size, args.vgg_encode_images))
        else:
            candidates.append(ImageCandidate(name, args.batch_size, args.encode_images))
        print(f"# built {name} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        shift = r % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            if getattr(candidate, "size", None) == APP_SIZE and r >= args.app_rounds:
                continue
            start = time.perf_counter()
            candidate.run_round(args.steps)
            print(
                f"# round {r + 1}: {candidate.name} {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    images = [c for c in candidates if isinstance(c, ImageCandidate)]
    embedding = next((c for c in candidates if isinstance(c, EmbeddingCandidate)), None)
    text = tables(args, images, embedding)
    text += f"\nWhole run: {time.perf_counter() - began:.0f} s.\n"
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
