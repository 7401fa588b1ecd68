"""Run by the cross-backend tests in a fresh process on the backend of $KERAS_BACKEND.

    python backend_worker.py MODEL.keras BATCH.npz OUT.npz [SAVE.keras]

Loads the GPQ in MODEL.keras (saved on any backend), computes on the batch (x_l, x_u, y of
BATCH.npz) what the tests compare: `loss_and_gradients`, the moving statistics it leaves, and the
features of x_l; writes them to OUT.npz. With SAVE.keras it also builds a GPQ of the same
configuration here (seeded) and saves it, with its features of x_l in OUT.npz as `own_features`.
"""

import sys

import keras
import numpy as np

from gpq_keras.model import GPQ, load_gpq, save_atomic


def describe(model, batch):
    """{name: array} of what the cross-backend tests compare, for `model` on `batch`."""
    data = ({"labeled": batch["x_l"], "unlabeled": batch["x_u"]}, batch["y"])
    features = model.predict(batch["x_l"], verbose=0)
    losses, grads = model.loss_and_gradients(data)
    out = {f"loss/{name}": np.float64(value) for name, value in losses.items()}
    out.update({f"grad/{v.path}": g for v, g in zip(model.trainable_variables, grads)})
    out.update(
        {f"state/{v.path}": keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables}
    )
    out["features"] = features
    return out


def main(model_path, batch_path, out_path, save_path=None):
    batch = dict(np.load(batch_path))
    model = load_gpq(model_path)
    out = describe(model, batch)
    out["backend"] = np.array(keras.config.backend())
    if save_path:
        keras.utils.set_random_seed(1)
        own = GPQ(model.gpq_config)
        save_atomic(own, save_path)
        out["own_features"] = own.predict(batch["x_l"], verbose=0)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
