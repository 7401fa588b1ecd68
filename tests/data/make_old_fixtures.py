"""How the fixtures of earlier gpq_keras versions in tests/data were made: by the code of those
versions, never by today's (tests/test_old_versions.py checks that today's code reads them).

Run by hand, once per part, with the old code first on the path and outside /work/main (Python puts
the current folder before PYTHONPATH):

```
git -C /work/main worktree add --detach /tmp/old-45e8c99 45e8c99
cd /tmp && PYTHONPATH=/tmp/old-45e8c99 /work/main/.venv/bin/python \
    /work/main/tests/data/make_old_fixtures.py model
```

Parts, and the commit whose code must run them (the last one that wrote that format):

- `index_v1` (336dcc3): `pqindex_v1_336dcc3.npz`, PQIndex format 1 (K=8, original mode, int labels).
- `index_v2` (8d211cd): `pqindex_v2_8d211cd.npz`, format 2 (nbits, model fingerprint, checksum;
  K=16, M=4, consistent mode, custom ids, multi-hot labels).
- `model` (45e8c99, the previous release): `gpq_45e8c99_tiny.keras`, a tiny GPQ after one training
  step, and `pqindex_v3_45e8c99.npz`, format 3 (sources, class names) built with that model.
- `run` (45e8c99): `run_45e8c99/`, a `gpq train` run folder interrupted (as Ctrl-C does) after its
  first of two epochs, and in `run_45e8c99_expected.npz` what the same code gives when it resumes
  a copy of it.

Each fixture's outputs, as the old code computed them, go to a sidecar `*_expected.npz`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARTS = {"index_v1": "336dcc3", "index_v2": "8d211cd", "model": "45e8c99", "run": "45e8c99"}
HERE = os.path.dirname(os.path.abspath(__file__))

# The run folder's command (its --output is added); the test reruns it to resume.
RUN_ARGS = [
    "train",
    "--data",
    "digits",
    "--labeled-per-class",
    "3",
    "--val-per-class",
    "1",
    "--epochs",
    "2",
    "--batch-size",
    "10",
    "--n-book",
    "3",
    "--n-word",
    "4",
    "--filters",
    "2,2,2,2",
    "--eval-every",
    "2",
    "--save-every",
    "1",
    "--seed",
    "0",
    "--deterministic",
]
PROBE_IMAGES = 6  # digits (32x32) whose features the resumed model's sidecar keeps


def code_revision():
    """The commit of the checkout the imported gpq_keras comes from (`git rev-parse`)."""
    import gpq_keras

    root = os.path.dirname(os.path.dirname(os.path.abspath(gpq_keras.__file__)))
    out = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True
    )
    return root, out.stdout.strip()


def features(seed, n, dim):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def tiny_model(config_kwargs, seed=0):
    import keras

    from gpq_keras.config import GPQConfig
    from gpq_keras.model import GPQ

    keras.utils.set_random_seed(seed)
    return GPQ(GPQConfig(image_shape=(16, 16, 3), filters=(4, 8, 8, 8), **config_kwargs))


def search_sidecar(index, queries, k, **extra):
    distances, ids = index.search(queries, k)
    return dict(queries=queries, k=np.array(k), distances=distances, ids=ids, **extra)


def make_index_v1(out):
    """Format 1 (336dcc3): M=3, K=8 (codes of 9 bits in 2 bytes), original mode, int labels."""
    from gpq_keras.retrieval import PQIndex

    model = tiny_model(dict(num_subspaces=3, num_codewords=8, subspace_dim=4, num_classes=5))
    index = PQIndex.from_model(model, mode="original")
    db = features(1, 40, index.dim)
    labels = np.arange(40) % 5
    index.add(db, labels=labels)
    path = os.path.join(out, "pqindex_v1_336dcc3.npz")
    index.save(path)
    sidecar = search_sidecar(index, features(2, 6, index.dim), 10, codes=index.codes, labels=labels)
    np.savez(os.path.join(out, "pqindex_v1_336dcc3_expected.npz"), **sidecar)
    return [path]


def make_index_v2(out):
    """Format 2 (8d211cd): M=4, K=16, consistent mode, custom ids, multi-hot labels, the model's
    fingerprint and the checksum."""
    from gpq_keras.retrieval import PQIndex

    model = tiny_model(dict(num_subspaces=4, num_codewords=16, subspace_dim=3, num_classes=4))
    index = PQIndex.from_model(model, mode="consistent")
    db = features(3, 50, index.dim)
    ids = 1000 + 7 * np.arange(50, dtype=np.int64)
    labels = (np.random.default_rng(4).random((50, 4)) < 0.4).astype(np.int64)
    index.add(db[:30], ids=ids[:30], labels=labels[:30])
    index.add(db[30:], ids=ids[30:], labels=labels[30:])  # two adds, as a growing index has
    path = os.path.join(out, "pqindex_v2_8d211cd.npz")
    index.save(path)
    sidecar = search_sidecar(
        index,
        features(5, 7, index.dim),
        12,
        codes=index.codes,
        item_ids=ids,
        labels=labels,
        fingerprint=np.array(model.fingerprint),
    )
    np.savez(os.path.join(out, "pqindex_v2_8d211cd_expected.npz"), **sidecar)
    return [path]


def make_model(out):
    """The previous release (45e8c99): a tiny GPQ (pixels in, consistent mode) after one Adam step,
    its features and codes; and a format 3 index of its features with sources and class names."""
    from gpq_keras.retrieval import PQIndex, ProductQuantizer

    model = tiny_model(dict(num_subspaces=3, num_codewords=16, subspace_dim=4, num_classes=5))
    model.compile()
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    model.train_on_batch(
        {"labeled": pixels[:8].astype(np.float32), "unlabeled": pixels[8:].astype(np.float32)},
        np.arange(8) % 5,
    )
    path = os.path.join(out, "gpq_45e8c99_tiny.keras")
    model.save(path)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    feats = model.encode(images)
    np.savez(
        os.path.join(out, "gpq_45e8c99_tiny_expected.npz"),
        images=images,
        features=feats,
        predict=model.predict(images, verbose=0),
        codes_consistent=ProductQuantizer.from_model(model, "consistent").encode(feats),
        codes_original=ProductQuantizer.from_model(model, "original").encode(feats),
        codebook=model.codebook,
        prototypes=model.prototypes,
        fingerprint=np.array(model.fingerprint),
        retrieval_mode=np.array(model.gpq_config.retrieval_mode),
    )

    class_names = ["zero", "one", "two", "three", "four"]
    index = PQIndex.from_model(model, class_names=class_names)
    db_images = rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(30) % 5
    sources = np.array([f"images/{class_names[y]}/{i:03d}.png" for i, y in enumerate(labels)])
    index.add_images(db_images, labels=labels, sources=sources)
    index_path = os.path.join(out, "pqindex_v3_45e8c99.npz")
    index.save(index_path)
    sidecar = search_sidecar(
        index,
        model.encode(rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)),
        8,
        codes=index.codes,
        labels=labels,
        sources=sources,
        class_names=np.array(class_names),
    )
    np.savez(os.path.join(out, "pqindex_v3_45e8c99_expected.npz"), **sidecar)
    return [path, index_path]


def _interrupt_after_first_epoch():
    """Ctrl-C between epochs 1 and 2: a KeyboardInterrupt once the last of gpq train's callbacks
    (run.json's update) has run for epoch 1, so the backup, log row, checkpoint and TensorBoard
    events of epoch 1 are all written, as a Ctrl-C at that moment leaves them."""
    from gpq_keras import training

    on_epoch_end = training._RecordUpdate.on_epoch_end

    def stop(self, epoch, logs=None):
        on_epoch_end(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    training._RecordUpdate.on_epoch_end = stop


def make_run(out):
    """The previous release's run folder (45e8c99), interrupted after epoch 1 of 2; then a copy
    of it resumed by the same code, whose final model's features are the sidecar."""
    from gpq_keras import cli, training
    from gpq_keras.data import digits
    from gpq_keras.model import load_gpq

    target = os.path.join(out, "run_45e8c99")
    if os.path.exists(target):
        raise SystemExit(f"{target} exists; remove it first")
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # the command names its folder relatively, as the test reruns it
        _interrupt_after_first_epoch()
        status = cli.main(RUN_ARGS + ["--output", "run"])
        assert status == 130, status
        with open(os.path.join("run", "backup", training.TrainingBackup.METADATA)) as fh:
            assert json.load(fh)["epoch"] == 1
        if os.path.exists(os.path.join("run", ".lock")):
            os.remove(os.path.join("run", ".lock"))  # filelock's file, not part of the run
        shutil.copytree("run", target)
        # The old code's own resume, for the sidecar (a second process: the patch stays here).
        code = "import sys; from gpq_keras import cli; sys.exit(cli.main(sys.argv[1:]))"
        done = subprocess.run([sys.executable, "-c", code] + RUN_ARGS + ["--output", "run"])
        assert done.returncode == 0, done.returncode
        model = load_gpq(os.path.join("run", "model.keras"))
        images, _ = digits.load_images()
        probe = images[:: len(images) // PROBE_IMAGES][:PROBE_IMAGES]
        record = json.load(open(os.path.join("run", "run.json")))
        np.savez(
            os.path.join(out, "run_45e8c99_expected.npz"),
            args=np.array(RUN_ARGS),
            images=probe,
            features=model.encode(probe),
            iterations=np.array(int(model.optimizer.iterations)),
            steps_per_epoch=np.array(record["steps_per_epoch"]),
            log_csv=np.array(open(os.path.join("run", "log.csv")).read()),
        )
    return [target]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--out", default=HERE, help="where the fixtures go (tests/data)")
    args = parser.parse_args()
    root, revision = code_revision()
    if revision != PARTS[args.part]:
        raise SystemExit(
            f"{args.part} must be made by the code of {PARTS[args.part]}; gpq_keras comes from "
            f"{root} at {revision or 'no git checkout'} (PYTHONPATH, and run outside /work/main)"
        )
    out = os.path.abspath(args.out)
    make = {"index_v1": make_index_v1, "index_v2": make_index_v2}
    make.update(model=make_model, run=make_run)
    for path in make[args.part](out):
        print(f"wrote {path} with the code of {revision}")


if __name__ == "__main__":
    main()
