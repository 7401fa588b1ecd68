"""Long training runs: a run folder that survives crashes, and the callbacks `gpq train` uses.

A run folder `DIR` holds `model.keras` (the final model), `best.keras` (best validation mAP),
`log.csv` (one row per epoch), `logs/` (TensorBoard), `run.json` (the run record), `split.npz`
(the images of every part: `gpq_keras.data.split_record`), `checkpoints/`
(periodic `.keras` files) and, while a run is unfinished, `backup/` (the training state of
`TrainingBackup`). `.lock` is held while a run trains there; `.previous-*/` holds the run that
--overwrite / --restart replaces until the new run has saved its first backup.

```python
backup = TrainingBackup(run.backup, steps_per_epoch=steps, save_freq="epoch")
step = backup.restore(model)          # 0 for a new run
model.fit(train_dataset(split, seed=0, start_step=step)[0], initial_epoch=step // steps, ...,
          callbacks=[backup, EpochLog(run.log, initial_epoch), RetrievalValidation(...)])
```

Every file is written atomically (temporary file + rename), so a kill at any moment leaves the
previous version of each file whole. A step whose loss turns NaN or infinite stops the run at once
(`Diverged`), and no file is ever saved from weights that are not finite.
"""

import contextlib
import csv
import datetime
import io
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np

from gpq_keras.data.image_files import reraise_file_errors
from gpq_keras.distribute import num_workers, share_chief_state, strategy_of
from gpq_keras.files import atomic_path, display_path, open_regular, sweep_temporaries, write_json
from gpq_keras.metrics import codeword_entropy

RUN_FILES = ("model.keras", "best.keras", "log.csv", "run.json", "split.npz")
RUN_FOLDERS = ("logs", "checkpoints", "backup")
PREVIOUS_PREFIX = ".previous-"  # a previous run set aside while a new one starts (`set_aside`)


class Diverged(ValueError):
    """A step's loss, or the weights, became NaN or infinite: the run stopped there, and nothing was
    saved from those weights.

    Attributes: `what` ("the loss became NaN", ...), `epoch` (1-based) and `step` (the global step,
    1-based; None where unknown).
    """

    def __init__(self, what, epoch, step=None, path=None):
        self.what, self.epoch, self.step, self.path = what, epoch, step, path
        where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
        saved = "" if path is None else f"; nothing was saved over {display_path(path)}"
        super().__init__(f"{what} at {where}{saved}")


def global_step(model):
    """The optimizer's step count (the steps trained, a resumed run's included), or None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def check_finite_weights(model, epoch):
    """Raise `Diverged` (at `epoch`, 1-based) when a weight of `model` holds NaN or inf; call it
    before saving anything from the model."""
    bad = [
        variable.path
        for variable, value in zip(model.weights, model.get_weights())
        if not np.isfinite(value).all()
    ]
    if bad:
        raise Diverged(
            f"the weights became NaN or infinite ({len(bad)} of {len(model.weights)} tensors, "
            f"{bad[0]} first)",
            epoch,
            global_step(model),
        )


class RunDirectory:
    """The files of one `gpq train` run in `path` (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.model, self.best, self.log, self.record, self.split = (
            os.path.join(self.path, f) for f in RUN_FILES
        )
        self.logs, self.checkpoints, self.backup = (os.path.join(self.path, f) for f in RUN_FOLDERS)

    def state(self):
        """ "new" (nothing of a run yet), "interrupted" (a backup or an unfinished record) or
        "finished"."""
        if TrainingBackup.has_backup(self.backup):
            return "interrupted"
        record = self.read_record()
        if record is not None and record.get("status") != "finished":
            return "interrupted"
        return "finished" if os.path.exists(self.model) else "new"

    def read_record(self):
        """run.json as a dict, or None when there is none; a ValueError naming it for a damaged one
        (or one that is not a regular file)."""
        if not os.path.lexists(self.record):
            return None
        shown = display_path(self.record)
        try:
            with open_regular(self.record, "run record") as fh:
                record = json.load(fh)
        except (OSError, ValueError) as exc:  # JSON, UTF-8, a FIFO or a folder in its place...
            reason = " ".join(str(exc).replace(self.record, shown).split())
            raise ValueError(f"{shown}: not a readable run record ({reason})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{shown}: not a run record (expected a JSON object)")
        return record

    def write_record(self, record):
        write_json(self.record, record)

    def clear(self):
        """Remove everything a run writes here (for --overwrite / --restart); other files stay."""
        for name in RUN_FILES:
            path = os.path.join(self.path, name)
            if os.path.lexists(path):
                os.remove(path)
        for name in RUN_FOLDERS:
            path = os.path.join(self.path, name)
            if os.path.islink(path):
                os.remove(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)

    def set_aside(self):
        """Move the files of the run here (`RUN_FILES`, `RUN_FOLDERS`) into a new sub-folder
        `DIR/.previous-*` -> its path, None when there is nothing to move.

        For --overwrite / --restart once the new run can start: `restore_previous` puts the old
        run back if the new one stops before its first backup, `discard_previous` removes it after.
        Each file moves by a rename, `model.keras` last, so a kill in between leaves every file
        whole and the folder still holding a finished run until its model moves.
        """
        names = [*RUN_FOLDERS, *RUN_FILES[1:], RUN_FILES[0]]
        names = [name for name in names if os.path.lexists(os.path.join(self.path, name))]
        if not names:
            return None
        folder = tempfile.mkdtemp(prefix=PREVIOUS_PREFIX, dir=self.path)
        for name in names:
            os.rename(os.path.join(self.path, name), os.path.join(folder, name))
        return folder

    def restore_previous(self, folder):
        """Put the run `set_aside` moved into `folder` back, in place of what a new run wrote."""
        self.clear()
        for name in os.listdir(folder):
            os.rename(os.path.join(folder, name), os.path.join(self.path, name))
        os.rmdir(folder)

    def discard_previous(self):
        """Remove the previous runs set aside here (`DIR/.previous-*`) -> their paths."""
        removed = []
        for name in sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []:
            path = os.path.join(self.path, name)
            if (
                name.startswith(PREVIOUS_PREFIX)
                and os.path.isdir(path)
                and not os.path.islink(path)
            ):
                shutil.rmtree(path)
                removed.append(path)
        return removed

    @contextlib.contextmanager
    def lock(self):
        """Hold `DIR/.lock` (a `filelock` lock, `gpq_keras.files.file_lock`) while a run trains
        here; a ValueError at once if another process holds it. The operating system releases it
        when the process ends, however it ends."""
        from gpq_keras.files import LockTimeout, file_lock

        os.makedirs(self.path, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:  # file_lock(P) locks P + ".lock": DIR/ + .lock
                held.enter_context(file_lock(os.path.join(self.path, ""), wait=0))
            except LockTimeout:
                raise ValueError(
                    f"{display_path(self.path)}: another gpq train is running in this folder"
                ) from None
            yield

    def check_folders(self):
        """Refuse (ValueError) a symbolic link in place of one of the run's sub-folders: a run
        writes only inside its folder."""
        for folder in (self.logs, self.checkpoints, self.backup):
            if os.path.islink(folder):
                raise ValueError(
                    f"{display_path(folder)} is a symbolic link (to "
                    f"{display_path(os.path.realpath(folder))}); gpq train writes only inside "
                    "the run folder: remove the link"
                )

    def prepare(self):
        """Create the folders and remove temporary files a killed run left behind -> their paths.

        A run writes only inside its folder: a symbolic link in place of one of its sub-folders is
        refused (files are replaced by renames, which replace a link itself and never write through
        it).
        """
        self.check_folders()
        os.makedirs(self.path, exist_ok=True)
        stale = []
        for folder in (self.path, self.checkpoints, self.backup):
            if os.path.isdir(folder):
                stale += sweep_temporaries(folder)
        return stale


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups are atomic and resume inside an epoch.

    The state (model and optimizer variables) goes to one of two weight files in turn, then a small
    `training_metadata.json` (written atomically, last) names the file and the global step, so a
    kill at any moment leaves the last complete backup usable. `restore(model)` is called before
    `fit` and returns the global step to resume from (0 without a backup); the caller starts its
    data there and runs the rest of an interrupted epoch first (see `gpq_keras.cli`), so at most the
    steps since the last backup are lost and none is trained twice.

    Args:
        backup_dir: the folder of the backup.
        steps_per_epoch: int, steps of one epoch (to turn epochs and batches into global steps).
        save_freq: `"epoch"` or an int, a backup every that many steps as well.
        batch_offset: batches of the current epoch done before this `fit` (a resumed partial epoch).
    """

    METADATA = "training_metadata.json"
    SLOTS = ("state-a.weights.h5", "state-b.weights.h5")

    def __init__(self, backup_dir, steps_per_epoch, save_freq="epoch", batch_offset=0):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.steps_per_epoch = int(steps_per_epoch)
        self.batch_offset = int(batch_offset)
        self._epoch = 0
        self._step = 0

    @classmethod
    def has_backup(cls, backup_dir):
        return os.path.isfile(os.path.join(backup_dir, cls.METADATA))

    def _metadata(self):
        path = os.path.join(self.backup_dir, self.METADATA)
        try:
            with open_regular(path, "training backup") as fh:
                metadata = json.load(fh)
            step, slot = int(metadata["step"]), metadata["weights"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: not a readable training backup ({exc}); pass --restart to start over"
            ) from None
        if slot not in self.SLOTS or step < 0:
            raise ValueError(f"{path}: not a valid training backup (step {step}, weights {slot!r})")
        if metadata.get("steps_per_epoch", self.steps_per_epoch) != self.steps_per_epoch:
            raise ValueError(
                f"{path}: the backup was made with {metadata['steps_per_epoch']} steps per epoch, "
                f"this run has {self.steps_per_epoch}; rerun with the same data and batch size"
            )
        return step, os.path.join(self.backup_dir, slot)

    def restore(self, model):
        """Load the last backup into `model` (built and compiled) -> the global step to resume
        at."""
        if not self.has_backup(self.backup_dir):
            return 0
        step, weights = self._metadata()
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(weights)
        except Exception as exc:  # h5py and Keras raise many types for a damaged or mismatched file
            raise ValueError(
                f"{weights}: cannot restore the training state ({type(exc).__name__}: {exc}); "
                "pass --restart to start over"
            ) from None
        return step

    def on_train_begin(self, logs=None):
        pass  # `restore` ran before fit, so the data could start at the restored step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step = self._epoch * self.steps_per_epoch + self.batch_offset + batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._step = (epoch + 1) * self.steps_per_epoch
        self.batch_offset = 0
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        check_finite_weights(self.model, self._epoch + 1)  # the last backup stays a finite one
        os.makedirs(self.backup_dir, exist_ok=True)
        try:
            _, current = self._metadata() if self.has_backup(self.backup_dir) else (None, None)
        except ValueError:
            current = None
        slot = self.SLOTS[1] if current and current.endswith(self.SLOTS[0]) else self.SLOTS[0]
        with atomic_path(os.path.join(self.backup_dir, slot), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        write_json(
            os.path.join(self.backup_dir, self.METADATA),
            {
                "step": self._step,
                "epoch": self._step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "weights": slot,
            },
        )

    def discard(self):
        """Remove the backup (the run finished)."""
        if os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras' `TerminateOnNaN` that raises `Diverged` (with the epoch and the global step) at the
    end of the step whose loss is NaN or infinite.

    Put it first among the callbacks: the exception stops `fit` before any other callback of that
    step runs, so nothing (a backup, a checkpoint, a best model) is saved from its weights.
    """

    def __init__(self):
        super().__init__(raise_error=True)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError:
            loss = float((logs or {}).get("loss"))
            what = "NaN" if math.isnan(loss) else "infinite"
            raise Diverged(
                f"the loss became {what}", self._epoch + 1, global_step(self.model)
            ) from None


class EpochLog(keras.callbacks.Callback):
    """log.csv: one row per epoch (0-based `epoch`, as Keras' CSVLogger), the losses, the learning
    rate and the validation figures of the epochs that have them; rewritten atomically after every
    epoch.

    Rows of epochs >= `initial_epoch` already in the file (from an interrupted run) are dropped, so
    each epoch appears once.
    """

    def __init__(self, path, initial_epoch=0):
        super().__init__()
        self.path = os.fspath(path)
        self.rows = [row for row in self.read(self.path) if int(row["epoch"]) < initial_epoch]

    @staticmethod
    def read(path):
        """The rows of a log.csv as dicts ([] when there is none)."""
        if not os.path.exists(path):
            return []
        try:
            with open_regular(path, "log") as raw, io.TextIOWrapper(raw, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{display_path(path)}: not a gpq log ({exc})") from None
        if any(not str(row.get("epoch", "")).isdigit() for row in rows):
            raise ValueError(
                f"{display_path(path)}: not a gpq log (every row needs an integer 'epoch')"
            )
        return rows

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": str(epoch)}
        for key, value in (logs or {}).items():
            row[key] = f"{float(value):.8g}" if np.ndim(value) == 0 else str(value)
        optimizer = getattr(self.model, "optimizer", None)
        if "learning_rate" not in row and optimizer is not None:
            row["learning_rate"] = (
                f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.8g}"
            )
        self.rows.append(row)
        fields = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            fh.write(buffer.getvalue())


class PeriodicCheckpoint(keras.callbacks.Callback):
    """`epoch_NNN.keras` every `every` epochs in `directory`, written atomically; only the last
    `keep` stay."""

    def __init__(self, directory, every, keep=3):
        super().__init__()
        if every < 1 or keep < 1:
            raise ValueError(f"every and keep must be >= 1; received every={every}, keep={keep}")
        self.directory, self.every, self.keep = os.fspath(directory), int(every), int(keep)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        from gpq_keras.model import save_atomic

        check_finite_weights(self.model, epoch + 1)
        save_atomic(self.model, os.path.join(self.directory, f"epoch_{epoch + 1:03d}.keras"))
        saved = sorted(
            name
            for name in os.listdir(self.directory)
            if name.startswith("epoch_") and name.endswith(".keras")
        )
        for name in saved[: -self.keep]:
            os.remove(os.path.join(self.directory, name))


class RetrievalValidation(keras.callbacks.Callback):
    """Retrieval quality on held-out labeled images during `fit` (TensorFlow Similarity's
    EvalCallback idea).

    Every `every` epochs (and after the last) it encodes the validation queries and the database,
    builds a `PQIndex` in `mode`, and adds to the epoch's logs `val_mAP` (over the whole database),
    `val_precision@10` and `val_codeword_entropy` (the mean over codebooks of `codeword_entropy` of
    the database codes, log2 K at best; per-codebook values and usage histograms go to TensorBoard
    under `log_dir`). With `best_path` the model is saved there (atomically) whenever `val_mAP`
    improves. Weights that are not finite raise `Diverged` instead of being validated or saved.

    Args:
        queries, query_labels: held-out labeled images (uint8) and their labels; never the test
            queries.
        database, database_labels: the images searched (the unlabeled set) and their labels.
        every: int, validate every that many epochs.
        epochs: the run's last epoch count (it is always validated).
        mode: retrieval mode. Default "consistent".
        best_path, log_dir: optional `best.keras` path and TensorBoard folder.
        best: the best val_mAP so far (a resumed run), or None.
    """

    def __init__(
        self,
        queries,
        query_labels,
        database,
        database_labels,
        every=1,
        epochs=None,
        mode="consistent",
        best_path=None,
        log_dir=None,
        best=None,
        batch_size=None,
    ):
        super().__init__()
        self.queries, self.query_labels = queries, np.asarray(query_labels)
        self.database, self.database_labels = database, np.asarray(database_labels)
        self.every, self.epochs, self.mode = int(every), epochs, mode
        self.best_path, self.log_dir, self.batch_size = best_path, log_dir, batch_size
        self.best = best
        self.best_epoch = None
        self.last = None
        self._writer = None

    def evaluate(self):
        """{"val_mAP", "val_precision@10", "val_codeword_entropy"} and per-codebook entropies of the
        model now."""
        from gpq_keras import metrics
        from gpq_keras.retrieval import PQIndex

        index = PQIndex.from_model(self.model, mode=self.mode)
        index.add(self.model.encode(self.database, batch_size=self.batch_size))
        queries = self.model.encode(self.queries, batch_size=self.batch_size)
        k = min(10, index.ntotal)
        result = metrics.evaluate_ranking(
            index.rank(queries, with_distances=False),
            self.query_labels,
            self.database_labels,
            precision_at=(k,),
        )
        entropy = codeword_entropy(index.codes, index.num_codewords)
        return (
            {
                "val_mAP": result["mAP"],
                f"val_precision@{k}": result["precision"][k],
                "val_codeword_entropy": float(entropy.mean()),
            },
            entropy,
            index.codes,
        )

    def on_epoch_end(self, epoch, logs=None):
        last = self.epochs is not None and epoch + 1 == self.epochs
        if (epoch + 1) % self.every and not last:
            return
        check_finite_weights(self.model, epoch + 1)  # NaN weights are never validated or saved
        figures, entropy, codes = self.evaluate()
        if logs is not None:
            logs.update(figures)
        self.last = {"epoch": epoch + 1, **figures}
        if self.best is None or figures["val_mAP"] > self.best:
            self.best, self.best_epoch = figures["val_mAP"], epoch + 1
            if self.best_path:
                from gpq_keras.model import save_atomic

                save_atomic(self.model, self.best_path)
        if self.log_dir:
            self._summaries(epoch + 1, entropy, codes)

    def _summaries(self, step, entropy, codes):
        from gpq_keras.data import has_tensorflow

        if not has_tensorflow():  # TensorBoard's writer is TensorFlow's
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "codewords"))
        with self._writer.as_default(step=step):
            for m, value in enumerate(entropy):
                tf.summary.scalar(f"codeword_entropy/codebook_{m:02d}", value)
                tf.summary.histogram(
                    f"codeword_usage/codebook_{m:02d}",
                    codes[:, m].astype(np.float32),
                    buckets=int(self.model.gpq_config.num_codewords),
                )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def finite_or_none(value):
    """A float for JSON, None for NaN/inf/None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def new_record(command, settings):
    """The start of a run.json: the command line, its settings (GPQConfig included), the library
    versions and the devices (`gpq_keras.environment.describe`, as `gpq doctor` shows them) and the
    start time."""
    from gpq_keras.environment import describe

    environment = describe(devices=True)
    return {
        "command": list(command),
        "settings": settings,
        "config": settings.get("config"),
        "seed": settings.get("seed"),
        "backend": environment["backend"],
        "versions": environment["versions"],
        "devices": environment["devices"],
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def fit_run(
    model,
    split,
    run,
    *,
    epochs,
    batch_size,
    seed,
    validation=None,
    eval_every=5,
    backup_every_steps=None,
    save_every=0,
    keep_checkpoints=3,
    record=None,
    verbose=2,
    callbacks=(),
    pipeline="auto",
    previous=None,
):
    """Train `model` (compiled) on `split` in the run folder `run`, resuming from its backup if it
    has one.

    The data of global step g is a function of (seed, g) (`train_dataset(start_step=g)`), so a
    resumed run sees what it would have seen; an epoch interrupted after b of its steps is finished
    with the remaining steps first. In a multi-worker run every worker resumes from the chief's
    backup (`share_chief_state`); call it outside the strategy's scope. Writes `log.csv`, `logs/`,
    `checkpoints/`, `best.keras` (with `validation`), updates `record` into `run.json` as it goes,
    saves `model.keras` and removes the backup at the end.

    A step whose loss is NaN or infinite stops the run at once (`StopOnNaN`), as do weights that are
    not finite when something is about to be saved from them: run.json then says "diverged" (with
    the epoch and the step), nothing is saved from those weights (`model.keras`, `best.keras`,
    checkpoints and the backup keep their last finite versions, or stay absent), and `Diverged`
    is raised naming `model.keras`.

    Args:
        model: a compiled `GPQ`.
        split: the training `Split` (validation images already held out).
        run: a `RunDirectory`.
        epochs, batch_size, seed: as for `train_dataset` / `fit`.
        validation: None or (x_val, y_val): held-out labeled images, searched against the database
            (`split.validation_database(x_val)`: `x_db`, the unlabeled set in the paper's
            protocol; under `unseen` the database of every class).
        eval_every: validate every that many epochs (and after the last).
        backup_every_steps: None (a backup per epoch) or an int: also every that many steps.
        save_every, keep_checkpoints: periodic `checkpoints/epoch_NNN.keras`, the last
            `keep_checkpoints` kept.
        record: dict written to run.json (status, progress and validation figures are added).
        verbose: `fit`'s verbosity.
        callbacks: more Keras callbacks, run after the run's own.
        pipeline: the training input, "auto", "tf.data" or "numpy" (`gpq_keras.data.train_input`).
        previous: None, or the folder `run.set_aside()` moved a previous run into: removed
            (`run.discard_previous`) once this run has saved its first backup, or at its end.

    Returns:
        The record dict.
    """
    from gpq_keras.data import has_tensorflow, resolve_pipeline, train_input
    from gpq_keras.data.split import steps_per_epoch
    from gpq_keras.model import save_atomic

    record, extra_callbacks = dict(record or {}), callbacks
    pipeline = resolve_pipeline(pipeline)
    options = {
        "pipeline": pipeline,
        "batch_size": batch_size,
        "seed": seed,
        "normalized": not getattr(model, "normalize_pixels", True),
    }  # what the model takes
    steps = steps_per_epoch(split, batch_size)
    backup = TrainingBackup(run.backup, steps, save_freq=backup_every_steps or "epoch")
    strategy = strategy_of(model)
    if num_workers(strategy) > 1 and _tf().distribute.has_strategy():
        # Under the scope of a multi-worker strategy a weight assignment is a broadcast from the
        # chief, which the other workers would have to join: the chief alone restores its backup,
        # outside the scope.
        raise ValueError(
            "fit_run: call it outside strategy.scope() in a multi-worker run (create and compile "
            "the model inside)"
        )
    if model.optimizer is not None and not model.optimizer.built:  # on every worker alike: creating
        with strategy.scope():  # variables is collective in multi-worker
            model.optimizer.build(model.trainable_variables)
    step = share_chief_state(
        model, backup.restore(model)
    )  # a multi-worker run resumes where the chief is
    if step > epochs * steps:
        raise ValueError(
            f"{run.backup}: the backup is at step {step} (epoch {step // steps}), beyond "
            f"--epochs {epochs}; rerun with at least {math.ceil(step / steps)} epochs or --restart"
        )
    initial_epoch, done = divmod(step, steps)
    record.update(
        status="running", steps_per_epoch=steps, total_steps=epochs * steps, pipeline=pipeline
    )
    if step:
        record.setdefault("resumed", []).append({"step": step, "epoch": initial_epoch})
    callbacks = [StopOnNaN()]  # first: a NaN step stops before anything saves its weights
    checker = None
    if validation is not None:
        best = (record.get("validation") or {}).get("best") or {}
        checker = RetrievalValidation(
            validation[0],
            validation[1],
            *split.validation_database(validation[0]),
            every=eval_every,
            epochs=epochs,
            best_path=run.best,
            log_dir=run.logs,
            best=best.get("val_mAP"),
        )
        callbacks.append(checker)
    callbacks.append(EpochLog(run.log, initial_epoch))
    callbacks.append(
        backup
    )  # after the log row: a kill in between redoes the epoch, its row written once
    if previous is not None:
        callbacks.append(_DropPrevious(run))
    if save_every:
        callbacks.append(PeriodicCheckpoint(run.checkpoints, save_every, keep_checkpoints))
    if has_tensorflow():  # Keras' TensorBoard callback writes with TensorFlow
        callbacks.append(keras.callbacks.TensorBoard(run.logs, write_graph=False))
    callbacks.append(_RecordUpdate(run, record, checker))
    callbacks += list(extra_callbacks)
    run.write_record(record)

    def fit(first_epoch, steps_per_epoch, start_step, offset, last_epoch):
        backup.batch_offset = offset
        dataset, _ = train_input(split, start_step=start_step, **options)
        with reraise_file_errors():  # a bad image file met while streaming: named in one line
            model.fit(
                dataset,
                initial_epoch=first_epoch,
                epochs=last_epoch,
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,
            )

    try:
        if done:  # finish the interrupted epoch with its remaining steps
            fit(initial_epoch, steps - done, step, done, initial_epoch + 1)
            initial_epoch += 1
        if initial_epoch < epochs:
            fit(initial_epoch, steps, initial_epoch * steps, 0, epochs)
        check_finite_weights(model, epochs)
    except Diverged as exc:
        for callback in callbacks:  # fit stopped without its on_train_end: close the log writers
            if isinstance(callback, (keras.callbacks.TensorBoard, RetrievalValidation)):
                callback.on_train_end()
        record.update(
            status="diverged",
            diverged={"epoch": exc.epoch, "step": exc.step, "what": exc.what},
            stopped=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        run.write_record(record)
        raise Diverged(exc.what, exc.epoch, exc.step, path=run.model) from None
    save_atomic(model, run.model)
    record.update(status="finished", finished=datetime.datetime.now().isoformat(timespec="seconds"))
    run.write_record(record)
    backup.discard()
    if previous is not None:
        run.discard_previous()
    return record


def _tf():
    import tensorflow as tf

    return tf


class _DropPrevious(keras.callbacks.Callback):
    """Removes the previous run set aside in the run folder (`RunDirectory.discard_previous`) once
    this run's first backup is written (put it after the `TrainingBackup`)."""

    def __init__(self, run):
        super().__init__()
        self.run, self.pending = run, True

    def _check(self):
        if self.pending and TrainingBackup.has_backup(self.run.backup):
            self.run.discard_previous()
            self.pending = False

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()


class _RecordUpdate(keras.callbacks.Callback):
    """Keeps run.json's progress and validation figures current after each epoch."""

    def __init__(self, run, record, checker):
        super().__init__()
        self.run, self.record, self.checker = run, record, checker

    def on_epoch_end(self, epoch, logs=None):
        self.record["epochs_done"] = epoch + 1
        self.record["final_losses"] = {
            k: finite_or_none(v)
            for k, v in (logs or {}).items()
            if not k.startswith("val_") and np.ndim(v) == 0
        }
        if self.checker is not None and self.checker.last is not None:
            validation = self.record.setdefault("validation", {})
            validation["final"] = {
                k: finite_or_none(v) if k != "epoch" else v for k, v in self.checker.last.items()
            }
            if self.checker.best_epoch is not None:
                validation["best"] = {
                    "epoch": self.checker.best_epoch,
                    "val_mAP": finite_or_none(self.checker.best),
                }
        self.run.write_record(self.record)
