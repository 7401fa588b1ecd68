"""Training and encoding on several devices or machines: TensorFlow's `tf.distribute`, and Keras'
`keras.distribution.DataParallel` on JAX.

`GPQ` itself is strategy-aware (its losses gather the global batch; `GPQConfig.sync_batch_norm`);
this module chooses the strategy, says which worker writes the run folder, and shares the chief's
training state with the other workers when a multi-worker run resumes.

```python
strategy = make_strategy("mirrored")            # every GPU of this machine
with strategy.scope():
    model = GPQ(config.replace(sync_batch_norm=strategy.num_replicas_in_sync > 1))
    model.compile()
model.fit(dataset, ...)                         # dataset batches are the global batch
```

On other Keras backends than TensorFlow there is no `tf.distribute`: `make_strategy("one" | "auto")`
gives `LOCAL`, this process's default device, and this module does not import TensorFlow. On JAX,
`make_strategy("data-parallel")` gives a `JAXDataParallel` over every visible device:

```python
strategy = make_strategy("data-parallel")       # Keras' distribution for the rest of the process
model = GPQ(config)                             # weights replicated on every device
model.compile()
model.fit(batches, ...)                         # each batch split over the devices
```
"""

import contextlib
import functools
import hashlib
import json
import os
import tempfile

import keras

from gpq_keras.config import STRATEGIES

NAMES = STRATEGIES  # the names `make_strategy` takes (`config.STRATEGIES`)


class LocalDevice:
    """The strategy of a backend without `tf.distribute` (JAX on one device): one process on its
    default device."""

    num_replicas_in_sync = 1
    cluster_resolver = None

    def scope(self):
        return contextlib.nullcontext()


LOCAL = LocalDevice()


class JAXDataParallel:
    """`--strategy data-parallel` on JAX: a `keras.distribution.DataParallel` as a strategy.

    Variables created under it (or after it is set for the process, as `make_strategy` does) are
    replicated on every device of its mesh, and each `fit` batch is split over them along its first
    axis. The step is one program compiled over the global batch, so the N-pair loss and batch norm
    see the whole batch (as `tf.distribute` with `sync_batch_norm`) and the gradients are those of
    one device. `predict` and `evaluate` take each batch whole (`JAXTrainer`): their last batch
    need not split evenly.

    ```python
    strategy = JAXDataParallel(keras.distribution.DataParallel())  # every visible device
    with strategy.scope():  # `fit` too: Keras reads the distribution as it runs
        model = GPQ(config)
        model.compile()
        model.fit(batches, ...)
    ```

    Args:
        distribution: a `keras.distribution.DataParallel`.
    """

    cluster_resolver = None

    def __init__(self, distribution):
        if not isinstance(distribution, keras.distribution.DataParallel):
            raise ValueError(
                "expected a keras.distribution.DataParallel. "
                f"Received: distribution={distribution!r}"
            )
        self.distribution = distribution
        self.num_replicas_in_sync = int(distribution.device_mesh.devices.size)

    def scope(self):
        return self.distribution.scope()


def strategy_of(model):
    """The `tf.distribute` strategy `model` was built under (TensorFlow); on JAX a
    `JAXDataParallel` of Keras' current distribution when it is a `DataParallel`; else `LOCAL`."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        return model.distribute_strategy
    if backend == "jax" and isinstance(
        keras.distribution.distribution(), keras.distribution.DataParallel
    ):
        return JAXDataParallel(keras.distribution.distribution())
    return LOCAL


def read_tf_config():
    """The cluster of a multi-worker run from the `TF_CONFIG` environment variable -> (cluster, task
    type, task index); a ValueError saying what is missing or malformed."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "--strategy multi-worker reads the cluster from the TF_CONFIG environment variable, "
            'which is not set (see README, "Training at scale")'
        )
    try:
        value = json.loads(text)
        cluster, task = value["cluster"], value["task"]
        task_type, index = task["type"], int(task["index"])
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"TF_CONFIG is not a valid cluster description ({type(exc).__name__}: {exc}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(members, list) or not 0 <= index < len(members):
        raise ValueError(
            f"TF_CONFIG: task {task_type} {index} is not in the cluster's {task_type} list"
        )
    return cluster, task_type, index


@functools.cache
def make_strategy(name="auto"):
    """A strategy by name (on TensorFlow a `tf.distribute.Strategy`), one per name and process
    (two strategies over the same devices in one process would reuse each other's collective keys).

    - `"one"`: the default strategy, one device (TensorFlow's placement: the first GPU, else the
      CPU; on JAX `LOCAL`).
    - `"mirrored"`: `MirroredStrategy` over this machine's GPUs (its logical CPU devices when there
      is no GPU; one unless they were split with `tf.config.set_logical_device_configuration`).
    - `"multi-worker"`: `MultiWorkerMirroredStrategy` over the machines of `TF_CONFIG`, each with
      its GPUs.
    - `"data-parallel"` (JAX): `JAXDataParallel` over every device JAX sees, set as Keras'
      distribution for the rest of the process (`keras.distribution.set_distribution`).
    - `"auto"`: mirrored (TensorFlow) or data-parallel (JAX) when more than one GPU is visible,
      else one device (host CPU devices do not count).

    Create it before TensorFlow runs anything else (a multi-worker strategy sets up its
    collectives), and on JAX before the model (its variables are laid out when created). A name
    of another backend's: a ValueError naming the one to use.
    """
    if name not in NAMES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {', '.join(NAMES)}")
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_strategy(name)
    if name == "data-parallel":
        instead = "on TensorFlow use --strategy mirrored" if backend == "tensorflow" else ""
        raise ValueError(
            "--strategy data-parallel is JAX's keras.distribution.DataParallel: it needs "
            f"KERAS_BACKEND=jax (the backend is {backend}{'; ' + instead if instead else ''})"
        )
    if backend != "tensorflow":
        if name in ("one", "auto"):
            return LOCAL
        raise ValueError(
            f"--strategy {name} is a tf.distribute strategy: it needs KERAS_BACKEND=tensorflow "
            f"(the backend is {backend})"
        )
    import tensorflow as tf

    if name == "multi-worker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    return tf.distribute.get_strategy()


def _jax_strategy(name):
    """`make_strategy` on JAX."""
    if name in ("mirrored", "multi-worker"):
        raise ValueError(
            f"--strategy {name} is a tf.distribute strategy: it needs KERAS_BACKEND=tensorflow "
            "(the backend is jax; use --strategy data-parallel for several devices)"
        )
    import jax

    several_gpus = jax.default_backend() != "cpu" and jax.device_count() > 1
    if name == "one" or (name == "auto" and not several_gpus):
        return LOCAL
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    keras.distribution.set_distribution(distribution)
    return JAXDataParallel(distribution)


def num_workers(strategy):
    """How many machines (processes) take part in `strategy`: 1 unless it is multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs) or 1


def is_chief(strategy):
    """Whether this process writes the run's outputs: always, except on the non-chief workers of a
    multi-worker run (the chief is task "chief", or "worker" 0 in a cluster without one)."""
    if num_workers(strategy) == 1:
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().jobs
    )


def scratch_folder(output, strategy):
    """Where a non-chief worker writes what the chief writes to `output`: a folder of this machine's
    temporary directory, named by the task and by `output`, so a rerun of the same run finds it."""
    resolver = strategy.cluster_resolver
    key = hashlib.sha256(os.path.abspath(output).encode()).hexdigest()[:12]
    name = (
        f"{os.path.basename(os.path.abspath(output))}-{resolver.task_type}{resolver.task_id}-{key}"
    )
    return os.path.join(tempfile.gettempdir(), "gpq-worker-scratch", name)


def check_global_batch(batch_size, strategy):
    """Raise a ValueError unless the global batch splits evenly over the strategy's replicas (each
    replica's slice the same size, so the mean over replicas is the mean over the batch)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"the global batch of {batch_size} images does not split evenly over {replicas} "
            f"replicas; use a multiple of {replicas} for --batch-size"
        )


def share_chief_state(model, step):
    """Give every worker of a multi-worker run the chief's variables (model and optimizer) and its
    global step -> the step. The chief restored them from its backup; the others start from their
    own (or no) state, so a resumed run needs no shared file system. One worker: `step`
    unchanged."""
    strategy = strategy_of(model)
    if num_workers(strategy) == 1:
        return step
    import tensorflow as tf

    if model.optimizer is not None and not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    variables = list(model.variables) + (
        list(model.optimizer.variables) if model.optimizer is not None else []
    )
    step_variable = tf.Variable(step if is_chief(strategy) else 0, dtype=tf.int64, trainable=False)

    def from_first_replica():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        values = [tf.convert_to_tensor(v.value if hasattr(v, "value") else v) for v in variables]
        values.append(tf.convert_to_tensor(step_variable))
        masked = [tf.where(first, value, tf.zeros_like(value)) for value in values]
        shared = [None] * len(masked)
        for dtype in {
            value.dtype for value in masked
        }:  # one all-reduce per dtype (floats, int counters)
            where = [i for i, value in enumerate(masked) if value.dtype == dtype]
            for i, value in zip(
                where, context.all_reduce(tf.distribute.ReduceOp.SUM, [masked[i] for i in where])
            ):
                shared[i] = value
        for variable, value in zip(variables, shared):
            variable.assign(value)
        return shared[-1]

    @tf.function
    def share():
        return strategy.run(from_first_replica)

    return int(strategy.experimental_local_results(share())[0])
