"""A TF1-graph re-statement of the original GPQ release, to make checkpoints and expected outputs in
tests.

`make_tf1_checkpoint` builds, in a private `tf.Graph` with `tf.compat.v1` (eager mode elsewhere is
left alone), the original's variables under their TF1 names, the original's forward pass F in
inference mode (conv SAME + bias, fused batch norm on the moving statistics with epsilon 1e-3, ReLU,
2x2 VALID max pools, a global-average-pooled branch after the third pool, concat [final 512-d,
branch 256-d], dense), and the pieces of a training graph that leave variables behind in a real
checkpoint: the training-mode batch norm's zero-debiased moving-mean update (`.../biased`,
`.../local_step`, made by TF's own `assign_moving_average`) and `AdamOptimizer(beta1=0.5).minimize`
(slots `<var>/Adam`, `<var>/Adam_1`, `beta1_power`, `beta2_power`). Every variable gets random
values, the batch-norm statistics non-trivial ones, and the whole is written with
`tf.compat.v1.train.Saver`, as the original's train.py does.

`TF1TrainStep` builds the original's whole training step (train.py with utils/GPQ_network.py and
utils/Functions.py) in a private graph: both streams through F with training-mode batch norm and its
moving-average updates, intra-normalisation, Z' = SA(intra_norm(C), Z), the N-pair PQ,
classification and subspace entropy losses with gradient reversal, and Adam on the staircase
learning rate; it runs one step on given batches from given variable values and returns the loss
terms, every gradient and the updated values.

The original's retrieval loops are restated in `original_retrieval.py`.
"""

import re

import numpy as np
import tensorflow as tf
from tensorflow.python.training import moving_averages  # what tf.contrib.layers.batch_norm called

# The original's colour pre-processing (train.py): images fed to its graph are (pixels - MEAN) /
# STD.
ORIGINAL_MEAN = (125.642, 123.738, 114.46)
ORIGINAL_STD = (63.01, 62.157, 66.94)


def to_pixels(normalized):
    """The pixels (float32, about 0..255) whose original pre-processing gives `normalized` images:
    what a gpq_keras model, which normalises its inputs itself, is given for the same network
    input."""
    return (np.asarray(normalized, np.float64) * ORIGINAL_STD + ORIGINAL_MEAN).astype(np.float32)


# The original's F, layer by layer: (conv scope, batch-norm scope, stage); pools after the 2nd, 4th,
# 7th conv.
CONV_SCOPES = ("conv2d",) + tuple(f"conv2d_{i}" for i in range(1, 10))
BN_SCOPES = (
    "batch0",
    "batch0-1",
    "batch1",
    "batch1-1",
    "batch2",
    "batch2-1",
    "batch2-2",
    "batch3",
    "batch3-1",
    "batch3-2",
)
STAGES = (0, 0, 1, 1, 2, 2, 2, 3, 3, 3)
POOL_AFTER = (1, 3, 6)
BRANCH_AFTER = 6
BN_DECAY, BN_EPSILON = 0.9, 1e-3
# the step count the fake training left in local_step and the Adam power accumulators
TRAIN_STEPS = 30
# The original's initialisers: tf.contrib's xavier_initializer (Glorot uniform) for Z, C and the
# conv and dense kernels; tf.layers' zero biases; tf.contrib batch_norm's beta 0, gamma 1, moving
# mean 0, moving variance 1.
_GLOROT = tf.compat.v1.glorot_uniform_initializer()
_ZEROS, _ONES = tf.compat.v1.zeros_initializer(), tf.compat.v1.ones_initializer()


def _forward(x, filters, feature_dim, training, force_updates=False, stats=None):
    """F(x) as the original builds it under `Fixed_VGG` (variables created on the first call).

    With `training`, batch norm normalises with the batch statistics and builds the moving-average
    updates (mean zero-debiased, variance not, decay 0.9; the batch variance fed to them is the
    fused kernel's, Bessel-corrected). `force_updates` makes each batch norm's output wait for its
    updates, as the original's `updates_collections=None` does, so running the features runs the
    updates. `stats`, a list, receives one dict per batch norm: `scope`, batch `mean`, `variance`
    (as fed to the moving average) and `count` (elements per channel, B*H*W).
    """
    branch = None
    with tf.compat.v1.variable_scope("Fixed_VGG", reuse=tf.compat.v1.AUTO_REUSE):
        for i, (conv, bn, stage) in enumerate(zip(CONV_SCOPES, BN_SCOPES, STAGES)):
            channels = x.shape[-1]
            with tf.compat.v1.variable_scope(conv):
                kernel = tf.compat.v1.get_variable(
                    "kernel", [3, 3, channels, filters[stage]], initializer=_GLOROT
                )
                bias = tf.compat.v1.get_variable("bias", [filters[stage]], initializer=_ZEROS)
            x = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), bias)
            with tf.compat.v1.variable_scope(bn):
                beta = tf.compat.v1.get_variable("beta", [filters[stage]], initializer=_ZEROS)
                gamma = tf.compat.v1.get_variable("gamma", [filters[stage]], initializer=_ONES)
                mean = tf.compat.v1.get_variable(
                    "moving_mean", [filters[stage]], initializer=_ZEROS, trainable=False
                )
                variance = tf.compat.v1.get_variable(
                    "moving_variance", [filters[stage]], initializer=_ONES, trainable=False
                )
                if training:
                    inputs = x
                    x, batch_mean, batch_var = tf.compat.v1.nn.fused_batch_norm(
                        x, gamma, beta, epsilon=BN_EPSILON, is_training=True
                    )
                    updates = [
                        moving_averages.assign_moving_average(
                            mean, batch_mean, BN_DECAY, zero_debias=True
                        ),
                        moving_averages.assign_moving_average(
                            variance, batch_var, BN_DECAY, zero_debias=False
                        ),
                    ]
                    if force_updates:
                        with tf.control_dependencies(updates):
                            x = tf.identity(x)
                    if stats is not None:
                        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
                        stats.append(
                            {
                                "scope": f"Fixed_VGG/{bn}",
                                "mean": batch_mean,
                                "variance": batch_var,
                                "count": count,
                            }
                        )
                else:
                    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
                        x,
                        gamma,
                        beta,
                        mean=mean,
                        variance=variance,
                        epsilon=BN_EPSILON,
                        is_training=False,
                    )
            x = tf.nn.relu(x)
            if i in POOL_AFTER:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
            if i == BRANCH_AFTER:
                branch = tf.reduce_mean(x, axis=[1, 2])  # tflearn global_avg_pool
        x = tf.concat([tf.reduce_mean(x, axis=[1, 2]), branch], axis=1)
        with tf.compat.v1.variable_scope("dense"):
            kernel = tf.compat.v1.get_variable(
                "kernel", [x.shape[-1], feature_dim], initializer=_GLOROT
            )
            bias = tf.compat.v1.get_variable("bias", [feature_dim], initializer=_ZEROS)
    return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def _value_for(name, shape, rng):
    """Random values with sensible magnitudes; moving variance positive; zero-debias pieces
    consistent."""
    if name.endswith("/local_step"):
        return np.float32(TRAIN_STEPS)
    if name == "beta1_power":
        return np.float32(0.5**TRAIN_STEPS)
    if name == "beta2_power":
        return np.float32(0.999**TRAIN_STEPS)
    if name.endswith("moving_variance"):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if name.endswith("gamma"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith("/kernel"):
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (rng.standard_normal(shape) * 0.3).astype(
        np.float32
    )  # biases, beta, moving_mean, Z, C, slots


def make_tf1_checkpoint(
    prefix,
    images,
    *,
    filters=(64, 128, 256, 512),
    num_subspaces=12,
    num_codewords=16,
    subspace_dim=12,
    num_classes=10,
    seed=0,
):
    """Build the original's variables and graph, fill them randomly, save to `prefix` with a TF1
    Saver.

    Returns a dict: `features` (N, M*d) float32, F(images) computed by the TF1 graph in inference
    mode; `values` {checkpoint name: array} of every saved variable; `Z` and `C`.
    """
    rng = np.random.default_rng(seed)
    feature_dim = num_subspaces * subspace_dim
    images = np.asarray(images, np.float32)
    graph = tf.Graph()
    with graph.as_default():
        # GPQ.__init__ creates Z and C first; F then runs twice in training mode (labeled and
        # unlabeled streams, AUTO_REUSE) and once for inference (Demo.py).
        z = tf.compat.v1.get_variable("Z", [num_codewords, feature_dim])
        c = tf.compat.v1.get_variable("C", [num_classes, feature_dim])
        x = tf.compat.v1.placeholder(tf.float32, [None, *images.shape[1:]], name="x")
        x_t = tf.compat.v1.placeholder(tf.float32, [None, *images.shape[1:]], name="x_T")
        f_s = _forward(x, filters, feature_dim, training=True)
        f_t = _forward(x_t, filters, feature_dim, training=True)
        loss = (
            tf.reduce_mean(tf.square(f_s))
            + tf.reduce_mean(f_t)
            + tf.reduce_sum(z)
            + tf.reduce_sum(c)
        )
        tf.compat.v1.train.AdamOptimizer(learning_rate=2e-4, beta1=0.5).minimize(loss)
        features = _forward(x, filters, feature_dim, training=False)
        variables = tf.compat.v1.global_variables()
        placeholders = {
            v.op.name: tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape) for v in variables
        }
        assigns = [v.assign(placeholders[v.op.name]) for v in variables]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = {v.op.name: _value_for(v.op.name, tuple(v.shape), rng) for v in variables}
            # the biased accumulator: moving_mean * (1 - decay^t)
            for name in values:
                if name.endswith("/biased"):
                    mean_name = name[: -len("/biased")].split("/", 2)[-1]
                    values[name] = (values[mean_name] * (1 - BN_DECAY**TRAIN_STEPS)).astype(
                        np.float32
                    )
            sess.run(assigns, {placeholders[name]: value for name, value in values.items()})
            out = sess.run(features, {x: images})
            saver.save(sess, str(prefix), write_meta_graph=True)
    return {"features": out, "values": values, "Z": values["Z"], "C": values["C"]}


def write_checkpoint(prefix, tensors):
    """Save {checkpoint name: array} under exactly those names with a TF1 Saver (for broken
    checkpoints)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {
            name: tf.compat.v1.Variable(np.asarray(value), name=f"v{i}")
            for i, (name, value) in enumerate(sorted(tensors.items()))
        }
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False)


def read_checkpoint(prefix):
    """{name: array} of every variable in a checkpoint."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


# --- the original's training step (train.py, utils/GPQ_network.py, utils/Functions.py) ------------
# Constants of the original: config.py (alpha, beta, lam_1, lam_2), Functions.py (N_PQ_loss's
# reg_lambda, SME_loss's log guard), train.py (exponential_decay(0.0002, global_step, 100, 0.95,
# staircase=True), AdamOptimizer(beta1=0.5) with TF1's default beta2 and epsilon).
ORIGINAL_HYPER = dict(
    alpha=20.0,
    beta=4.0,
    lambda1=0.1,
    lambda2=0.1,
    reg_lambda=0.002,
    log_epsilon=1e-5,
    learning_rate=2e-4,
    decay_steps=100,
    decay_rate=0.95,
    beta1=0.5,
    beta2=0.999,
    adam_epsilon=1e-8,
)
LOSS_TERMS = ("loss", "npq_loss", "cls_loss", "entropy_loss")
_OPTIMIZER_STATE = (re.compile(r"/Adam(?:_\d+)?$"), re.compile(r"^beta[12]_power(?:_\d+)?$"))


def _intra_norm(x, num_subspaces):
    """tf.nn.l2_normalize on each of the M column blocks of x separately."""
    return tf.concat(
        [tf.nn.l2_normalize(part, axis=1) for part in tf.split(x, num_subspaces, axis=1)], axis=1
    )


def _soft_assignment(codebook, x, num_subspaces, alpha):
    """SA(codebook, x): per block m, softmax over codewords of -alpha (1 - x_m . c_m), times c_m;
    intra-normed."""
    blocks = []
    for x_m, c_m in zip(
        tf.split(x, num_subspaces, axis=1), tf.split(codebook, num_subspaces, axis=1)
    ):
        weights = tf.nn.softmax(-alpha * (1.0 - tf.matmul(x_m, c_m, transpose_b=True)), axis=1)
        blocks.append(tf.matmul(weights, c_m))
    return _intra_norm(tf.concat(blocks, axis=1), num_subspaces)


def _classifier_logits(features, prototypes, num_subspaces, beta):
    """Mean over blocks of (beta f_m) @ (beta p_m)^T; the original splits f by columns and P^T by
    rows."""
    f_blocks = tf.split(features * beta, num_subspaces, axis=1)
    p_blocks = tf.split(tf.transpose(prototypes) * beta, num_subspaces, axis=0)
    return tf.reduce_mean(
        tf.stack([tf.matmul(f, p) for f, p in zip(f_blocks, p_blocks)], axis=2), axis=2
    )


def _reverse_gradient(x):
    """Identity forward, gradient times -1 (the original's flip_gradient with l = 1)."""
    return tf.stop_gradient(x * 2.0) - x


def _n_pair_pq_loss(similarity, f, q, num_subspaces, reg_lambda):
    norms = tf.reduce_mean(tf.reduce_sum(tf.square(f), 1)) + tf.reduce_mean(
        tf.reduce_sum(tf.square(q), 1)
    )
    logits = num_subspaces * tf.matmul(
        tf.nn.l2_normalize(f, axis=1), tf.nn.l2_normalize(q, axis=1), transpose_b=True
    )
    xent = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=similarity, logits=logits))
    return 0.25 * reg_lambda * norms + xent


def _is_optimizer_state(name):
    return any(pattern.search(name) for pattern in _OPTIMIZER_STATE)


class TF1TrainStep:
    """The original's full training step as a `tf.compat.v1` graph in its own `tf.Graph` and
    `Session`.

    As train.py builds it: P = intra_norm(C); Z' = SA(P, Z); f = intra_norm(F(x)), g = intra_norm(
    reverse_grad(F(x_T))), F in training mode for both streams (each with its own batch statistics
    and its own moving-average updates, forced as `updates_collections=None` does); q = SA(Z', f);
    loss = N-pair PQ(S, f, q) + lambda1 * SME(g, P) + lambda2 * CE(Y, logits(f, P)),
    S = row-normalised Y Y^T computed in NumPy as train.py does;
    `AdamOptimizer(2e-4 * 0.95 ** floor(step / 100), beta1=0.5)` on every trainable variable (the 42
    of F, Z and C). C gets the entropy term's plain gradient; F gets it reversed.

    The original leaves the order of the two streams' moving-average updates undefined: nothing
    orders the two F calls, both read-modify-write the same moving statistics and the same shared
    zero-debias accumulators (`biased`, `local_step`), so their values after a step depend on
    scheduling. Every other result (losses, gradients, Adam's update) does not. `ordered=True` (the
    default) builds every op of the unlabeled stream under a control dependency on the labeled
    stream's output (which waits for its updates), so the moving statistics are deterministic and
    comparable with Keras, which updates in call order; `ordered=False` is the original graph as it
    is, for timing.

    ```python
    step = TF1TrainStep(
        make_tf1_checkpoint(prefix, images, **widths)["values"], image_shape=(16, 16, 3), **widths
    )
    out = step.run(x, x_t, labels)
    # out["losses"], out["grads"], out["values"], out["before"], out["stats"]
    ```

    Args:
        values: {TF1 name: array} to start from (e.g. `make_tf1_checkpoint(...)["values"]`). Names
            the graph does not hold raise a KeyError; graph variables not given keep the original's
            initialisers (Glorot uniform for Z, C, kernels; zeros/ones for biases and batch norm;
            zero-debias accumulators at zero, as at the start of training). Adam slots and power
            accumulators are skipped unless `optimizer_state=True`, so a step is Adam's first by
            default.
        filters, num_subspaces, num_codewords, subspace_dim, num_classes: the network's widths.
        image_shape: (H, W, C) of the images.
        ordered: see above.
        optimizer_state: load Adam slots and beta powers from `values` too.
        session_config: a `tf.compat.v1.ConfigProto` for the session.
        **hyper: overrides of `ORIGINAL_HYPER` (e.g. `decay_steps=1`).
    """

    def __init__(
        self,
        values=None,
        *,
        filters=(64, 128, 256, 512),
        num_subspaces=12,
        num_codewords=16,
        subspace_dim=12,
        num_classes=10,
        image_shape=(32, 32, 3),
        ordered=True,
        optimizer_state=False,
        session_config=None,
        **hyper,
    ):
        unknown = set(hyper) - set(ORIGINAL_HYPER)
        if unknown:
            raise TypeError(f"unknown hyper-parameters {sorted(unknown)}")
        h = dict(ORIGINAL_HYPER, **hyper)
        self.hyper, self.num_classes = h, num_classes
        m, feature_dim = num_subspaces, num_subspaces * subspace_dim
        self.graph = tf.Graph()
        with self.graph.as_default():
            z = tf.compat.v1.get_variable("Z", [num_codewords, feature_dim], initializer=_GLOROT)
            c = tf.compat.v1.get_variable("C", [num_classes, feature_dim], initializer=_GLOROT)
            self.x = tf.compat.v1.placeholder(tf.float32, [None, *image_shape], name="x")
            self.x_t = tf.compat.v1.placeholder(tf.float32, [None, *image_shape], name="x_T")
            self.label = tf.compat.v1.placeholder(tf.float32, [None, num_classes], name="label")
            self.label_mat = tf.compat.v1.placeholder(tf.float32, [None, None], name="label_Mat")
            self.global_step = tf.compat.v1.placeholder(tf.float32, [], name="global_step")

            prototypes = _intra_norm(c, m)
            refined = _soft_assignment(prototypes, z, m, h["alpha"])  # Z' (K, M*d)
            stats_s, stats_t = [], []
            raw_s = _forward(
                self.x, filters, feature_dim, training=True, force_updates=True, stats=stats_s
            )
            # Ordered: every op of the unlabeled stream, its reads of the moving averages and of the
            # shared zero-debias accumulators included, waits for the labeled stream and its
            # updates.
            with tf.control_dependencies([raw_s] if ordered else None):
                raw_t = _forward(
                    self.x_t, filters, feature_dim, training=True, force_updates=True, stats=stats_t
                )
            f = _intra_norm(raw_s, m)
            g = _intra_norm(_reverse_gradient(raw_t), m)
            q = _soft_assignment(refined, f, m, h["alpha"])
            npq = _n_pair_pq_loss(self.label_mat, f, q, m, h["reg_lambda"])
            cls = tf.reduce_mean(
                tf.nn.softmax_cross_entropy_with_logits(
                    labels=self.label, logits=_classifier_logits(f, prototypes, m, h["beta"])
                )
            )
            p = tf.nn.softmax(_classifier_logits(g, prototypes, m, h["beta"]), axis=1)
            ent = tf.reduce_mean(tf.reduce_sum(p * tf.math.log(p + h["log_epsilon"]), 1))
            total = npq + h["lambda1"] * ent + h["lambda2"] * cls
            self.losses = {"loss": total, "npq_loss": npq, "cls_loss": cls, "entropy_loss": ent}

            self.learning_rate = tf.compat.v1.train.exponential_decay(
                h["learning_rate"],
                self.global_step,
                h["decay_steps"],
                h["decay_rate"],
                staircase=True,
            )
            optimizer = tf.compat.v1.train.AdamOptimizer(
                self.learning_rate, beta1=h["beta1"], beta2=h["beta2"], epsilon=h["adam_epsilon"]
            )
            self.trainable = tf.compat.v1.trainable_variables()
            grads_and_vars = optimizer.compute_gradients(total, var_list=self.trainable)
            missing = [v.op.name for g_, v in grads_and_vars if g_ is None]
            if missing:
                raise RuntimeError(f"no gradient for {missing}")
            self.grads = {v.op.name: g_ for g_, v in grads_and_vars}
            self.train_op = optimizer.apply_gradients(grads_and_vars)
            self.scopes = [
                entry.pop("scope") for entry in stats_s
            ]  # fetchable tensors only in self.stats
            for entry in stats_t:
                del entry["scope"]
            self.stats = {"labeled": stats_s, "unlabeled": stats_t}
            self.variables = {v.op.name: v for v in tf.compat.v1.global_variables()}

            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
            self.session.run(tf.compat.v1.global_variables_initializer())
            self.load(
                {
                    name: value
                    for name, value in (values or {}).items()
                    if optimizer_state or not _is_optimizer_state(name)
                }
            )
        self.graph.finalize()

    def load(self, values):
        """Assign {TF1 name: array} to the graph's variables (KeyError naming any the graph
        lacks)."""
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise KeyError(f"not variables of the TF1 training graph: {unknown}")
        # One run of the variables' initialisers with their initial values fed (what Variable.load
        # does).
        inits = [self.variables[name].initializer for name in values]
        self.session.run(
            inits,
            {
                init.inputs[1]: np.asarray(value, init.inputs[1].dtype.as_numpy_dtype)
                for init, value in zip(inits, values.values())
            },
        )

    def values(self, names=None):
        """{TF1 name: array} of the variables (all by default)."""
        names = list(self.variables) if names is None else list(names)
        return dict(zip(names, self.session.run([self.variables[n] for n in names])))

    def feed(self, x, x_t, labels, step=0):
        """The feed_dict of one step, labels as train.py prepares them: one-hot Y (int ids or given
        2-D one-hot), S = Y Y^T with rows divided by their sums, in NumPy."""
        labels = np.asarray(labels)
        y = np.eye(self.num_classes)[labels] if labels.ndim == 1 else labels.astype(np.float64)
        similarity = y @ y.T
        similarity /= np.sum(similarity, axis=1, keepdims=True)
        return {
            self.x: x,
            self.x_t: x_t,
            self.label: y,
            self.label_mat: similarity,
            self.global_step: step,
        }

    def run(self, x, x_t, labels, step=0):
        """One training step (train.py feeds global_step = step index from 0) on NumPy batches.

        Returns a dict: `losses` {name: float} for `LOSS_TERMS` (before the update), `grads`
        {TF1 name: array} of every trainable variable, `learning_rate`, `before` and `values`
        {TF1 name: array} of every variable before and after the step, `stats`
        {"labeled"/"unlabeled": [{scope, mean, variance, count}]} the batch statistics each stream's
        batch norms used and fed to the moving averages.
        """
        before = self.values()
        fetches = {
            "train": self.train_op,
            "losses": self.losses,
            "grads": self.grads,
            "learning_rate": self.learning_rate,
            "stats": self.stats,
        }
        out = self.session.run(fetches, self.feed(x, x_t, labels, step))
        del out["train"]
        out["losses"] = {name: float(value) for name, value in out["losses"].items()}
        out["learning_rate"] = float(out["learning_rate"])
        for entries in out["stats"].values():
            for scope, entry in zip(self.scopes, entries):
                entry["scope"] = scope
        out["before"], out["values"] = before, self.values()
        return out

    def step_fn(self, x, x_t, labels, step=0):
        """A function of no arguments that runs one step and returns the loss (for timing)."""
        feed = self.feed(x, x_t, labels, step)
        return lambda: self.session.run([self.train_op, self.losses["loss"]], feed)[1]

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
