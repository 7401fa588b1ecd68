"""Input pipeline throughput against the GPQ train step: images held in memory and streamed from
image files.

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 20] [--batch-size 500] [--step-batch 50]
        [--files 2000] [--sizes 32,128,224] [--file-batch 64] [--rounds 3] [--parts memory,files]

Two parts, each a Markdown table of images/s, best and median over `--rounds` interleaved rounds
(every candidate of a table once per round, in an order that rotates, so that load changes hit all
alike; everything in this one process):

1. `memory`, on CIFAR-10-sized random data (5,000 labeled + 54,000 unlabeled 32x32 images):
   `train_dataset` (labeled + unlabeled images per step, augmentation on and off), `eval_dataset`,
   and full-size GPQ train steps (the default 48-bit config) fed by the pipeline.
2. `files`: `--files` JPEGs of `--source-size` pixels (generated into a temporary folder, so they
   are in the page cache: decoding is measured, not the disk), at each of `--sizes`:
   - `train_dataset` of `ImageFiles`: each batch decoded, resized and augmented when drawn;
   - `train_dataset` of the same images decoded once and held as arrays (in memory);
   - the GPQ train step's own images/s (`train_on_batch` on one batch held in memory, a
     `--filters` VGG at that size);
   - `GPQ.encode(ImageFiles)` against `model.predict` of the same images decoded (uint8 arrays).

Each pipeline round draws from a fresh iterator, 3 batches untimed then `--steps` timed. The
streamed pipeline must stay above the train step; `encode` from files should stay near `predict`.
"""

import argparse
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpq_keras.data import Split, eval_dataset, train_dataset  # noqa: E402
from gpq_keras.data.image_files import ImageFiles  # noqa: E402


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


def write_jpegs(folder, count, side, seed=0):
    """`count` side x side JPEGs (quality 90) of smooth random scenes with some noise, about the
    detail of photographs -> their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (side, side), method="bicubic")[0].numpy()
        image += rng.normal(0, 12, image.shape)
        out = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        path = os.path.join(folder, f"{i:06d}.jpg")
        with open(path, "wb") as fh:
            fh.write(out.getvalue())
        paths.append(path)
    return paths


def pipeline_rate(dataset, steps, images_per_step, warmup=3):
    """images/s of `steps` batches drawn from a fresh iterator, after `warmup` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
    tf.nest.map_structure(lambda t: t.numpy(), batch)
    return steps * images_per_step / (time.perf_counter() - start)


def timed(run, images):
    """images/s of one call of `run`, which handles `images` images."""
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def interleaved(candidates, rounds):
    """{name: [images/s per round]}: `candidates` {name: () -> images/s} run once per round, the
    order rotating by one each round."""
    names = list(candidates)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(candidates[name]())
    return rates


def print_table(title, rates, notes=()):
    width = max(len(name) for name in rates)
    print(f"\n### {title}\n")
    print(f"| {'what':<{width}} | best images/s | median images/s |")
    print(f"|{'-' * (width + 2)}|--------------:|----------------:|")
    for name, values in rates.items():
        print(f"| {name:<{width}} | {max(values):>13,.0f} | {statistics.median(values):>15,.0f} |")
    for note in notes:
        print(f"\n{note}")


def encoding(model, images, batch_size):
    """() -> images/s of `GPQ.encode` of `ImageFiles`, or of `model.predict` of an array."""
    if isinstance(images, ImageFiles):
        return lambda: timed(lambda: model.encode(images, batch_size=batch_size), len(images))
    return lambda: timed(
        lambda: model.predict(images, batch_size=batch_size, verbose=0), len(images)
    )


def memory_part(args):
    from gpq_keras import GPQ, GPQConfig

    split = cifar_sized_split()
    b = args.batch_size
    candidates = {}
    for augmented in (True, False):
        ds, _ = train_dataset(split, batch_size=b, seed=0, augmented=augmented)
        candidates[f"train_dataset {b}+{b}, augment={augmented}"] = lambda ds=ds: pipeline_rate(
            ds, args.steps, 2 * b
        )
    ds = eval_dataset(split.x_db, batch_size=b).repeat()
    candidates[f"eval_dataset {b}"] = lambda: pipeline_rate(ds, args.steps, b)
    if args.step_batch:
        s = args.step_batch
        step_ds, _ = train_dataset(split, batch_size=s, seed=0)
        model = GPQ(config=GPQConfig())
        model.compile()
        model.fit(step_ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace and warm up

        def train_steps():
            def fit():
                model.fit(step_ds, steps_per_epoch=args.train_steps, epochs=1, verbose=0)

            return timed(fit, args.train_steps * 2 * s)

        candidates[f"GPQ train step (48-bit VGG) {s}+{s}, fed by train_dataset"] = train_steps
    rates = interleaved(candidates, args.rounds)
    notes = []
    if args.step_batch:
        pipeline = min(max(v) for k, v in rates.items() if k.startswith("train_dataset"))
        notes.append(
            f"pipeline / train step (best): {pipeline / max(list(rates.values())[-1]):,.0f}x"
        )
    print_table("In memory (CIFAR-10-sized random images, 32x32)", rates, notes)


def files_part(args):
    import keras

    from gpq_keras import GPQ, GPQConfig

    b, s_b = args.file_batch, args.step_batch_files
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as folder:
        start = time.perf_counter()
        paths = write_jpegs(folder, args.files, args.source_size)
        kib = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        print(
            f"\n{args.files} JPEGs of {args.source_size}x{args.source_size} ({kib:.0f} KiB each) "
            f"written in {time.perf_counter() - start:.1f} s"
        )
        y = np.arange(args.files) % 10
        labeled = args.files // 2
        for size in args.sizes:
            files = ImageFiles(paths, size)
            decoded = files.read()
            streamed = Split(None, None, files, y, files[:labeled], y[:labeled], num_classes=10)
            memory = Split(None, None, decoded, y, decoded[:labeled], y[:labeled], num_classes=10)
            candidates = {}
            for name, split in (
                ("ImageFiles (JPEG, decoded as drawn)", streamed),
                ("arrays (decoded once, in memory)", memory),
            ):
                ds, _ = train_dataset(split, batch_size=b, seed=0)
                candidates[f"train_dataset {b}+{b}, augmented, {name}"] = lambda ds=ds: (
                    pipeline_rate(ds, args.steps, 2 * b)
                )
            config = GPQConfig(image_shape=(size, size, 3), filters=args.filters)
            model = GPQ(config)
            model.compile()
            ds, _ = train_dataset(memory, batch_size=s_b, seed=0)
            ((x, y_batch),) = ds.take(1)
            batch = ({k: v.numpy() for k, v in x.items()}, y_batch.numpy())
            model.train_on_batch(*batch)  # trace and warm up

            def train_steps(model=model, batch=batch):
                def run():
                    for _ in range(args.train_steps):
                        model.train_on_batch(*batch)

                return timed(run, args.train_steps * 2 * s_b)

            candidates[f"GPQ train step {s_b}+{s_b} (batch in memory)"] = train_steps
            e_b = args.encode_batch
            model.encode(files[:e_b], batch_size=e_b)  # trace and warm up
            model.predict(decoded[:e_b], batch_size=e_b, verbose=0)
            candidates[f"GPQ.encode(ImageFiles), batch {e_b}"] = encoding(model, files, e_b)
            candidates[f"model.predict(decoded uint8), batch {e_b}"] = encoding(model, decoded, e_b)
            rates = interleaved(candidates, args.rounds)
            best = {k: max(v) for k, v in rates.items()}
            names = list(rates)
            notes = [
                f"streamed / in memory: {best[names[0]] / best[names[1]]:.2f}x; "
                f"streamed / train step: {best[names[0]] / best[names[2]]:.1f}x; "
                f"encode(files) / predict(decoded): {best[names[3]] / best[names[4]]:.2f}x (best)"
            ]
            print_table(
                f"Streamed from {args.files} JPEG files at {size}x{size} (VGG filters "
                f"{','.join(map(str, args.filters))})",
                rates,
                notes,
            )
            del decoded, memory
            keras.backend.clear_session()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="pipeline batches to time")
    parser.add_argument("--batch-size", type=int, default=500, help="per stream, as the original")
    parser.add_argument(
        "--step-batch",
        type=int,
        default=50,
        help="per-stream batch of the timed 48-bit GPQ train steps in memory (0: skip them)",
    )
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--parts", default="memory,files", help="memory, files or both")
    parser.add_argument("--files", type=int, default=2000, help="JPEG files to generate")
    parser.add_argument("--source-size", type=int, default=256, help="their side in pixels")
    parser.add_argument(
        "--sizes", default="32,128,224", help="image sizes the files are read at, comma-separated"
    )
    parser.add_argument("--file-batch", type=int, default=64, help="per stream, streamed part")
    parser.add_argument(
        "--step-batch-files", type=int, default=16, help="per-stream batch of its train steps"
    )
    parser.add_argument("--encode-batch", type=int, default=100)
    parser.add_argument(
        "--filters", default="64,128,256,512", help="VGG widths of the streamed part's model"
    )
    args = parser.parse_args()
    args.sizes = [int(v) for v in args.sizes.split(",")]
    args.filters = tuple(int(v) for v in args.filters.split(","))
    parts = set(args.parts.split(","))

    print(f"{os.cpu_count()} CPU cores visible, TensorFlow {tf.__version__}")
    if "memory" in parts:
        memory_part(args)
    if "files" in parts:
        files_part(args)


if __name__ == "__main__":
    main()
