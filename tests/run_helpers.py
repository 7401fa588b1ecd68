"""What the tests of a `gpq train` child process share: waiting for its backup of an epoch."""

import json
import time

from gpq_keras.training import TrainingBackup


def wait_for_backup(out, epoch, proc, timeout=240):
    """Return once the run folder `out` holds a backup of `epoch` (or later) made by `proc`; an
    AssertionError if the process ends first or `timeout` seconds pass."""
    metadata = out / "backup" / TrainingBackup.METADATA
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.returncode} {proc.stderr.read()}")
        try:
            if json.loads(metadata.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"no backup of epoch {epoch} in time")
