"""A TF1-graph re-statement of the original GPQ release, to make checkpoints and expected outputs in tests.

`make_tf1_checkpoint` builds, in a private `tf.Graph` with `tf.compat.v1` (eager mode elsewhere is left
alone), the original's variables under their TF1 names, the original's forward pass F in inference mode
(conv SAME + bias, fused batch norm on the moving statistics with epsilon 1e-3, ReLU, 2x2 VALID max pools,
a global-average-pooled branch after the third pool, concat [final 512-d, branch 256-d], dense), and the
pieces of a training graph that leave variables behind in a real checkpoint: the training-mode batch norm's
zero-debiased moving-mean update (`.../biased`, `.../local_step`, made by TF's own `assign_moving_average`)
and `AdamOptimizer(beta1=0.5).minimize` (slots `<var>/Adam`, `<var>/Adam_1`, `beta1_power`, `beta2_power`).
Every variable gets random values, the batch-norm statistics non-trivial ones, and the whole is written with
`tf.compat.v1.train.Saver`, as the original's train.py does.

The original's retrieval loops are restated in `original_retrieval.py`.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.training import moving_averages  # what tf.contrib.layers.batch_norm called

# The original's F, layer by layer: (conv scope, batch-norm scope, stage); pools after the 2nd, 4th, 7th conv.
CONV_SCOPES = ("conv2d",) + tuple(f"conv2d_{i}" for i in range(1, 10))
BN_SCOPES = ("batch0", "batch0-1", "batch1", "batch1-1", "batch2", "batch2-1", "batch2-2",
             "batch3", "batch3-1", "batch3-2")
STAGES = (0, 0, 1, 1, 2, 2, 2, 3, 3, 3)
POOL_AFTER = (1, 3, 6)
BRANCH_AFTER = 6
BN_DECAY, BN_EPSILON = 0.9, 1e-3
TRAIN_STEPS = 30  # the step count the fake training left in local_step and the Adam power accumulators


def _forward(x, filters, feature_dim, training):
    """F(x) as the original builds it under `Fixed_VGG` (variables created on the first call)."""
    branch = None
    with tf.compat.v1.variable_scope("Fixed_VGG", reuse=tf.compat.v1.AUTO_REUSE):
        for i, (conv, bn, stage) in enumerate(zip(CONV_SCOPES, BN_SCOPES, STAGES)):
            channels = x.shape[-1]
            with tf.compat.v1.variable_scope(conv):
                kernel = tf.compat.v1.get_variable("kernel", [3, 3, channels, filters[stage]])
                bias = tf.compat.v1.get_variable("bias", [filters[stage]])
            x = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), bias)
            with tf.compat.v1.variable_scope(bn):
                beta = tf.compat.v1.get_variable("beta", [filters[stage]])
                gamma = tf.compat.v1.get_variable("gamma", [filters[stage]])
                mean = tf.compat.v1.get_variable("moving_mean", [filters[stage]], trainable=False)
                variance = tf.compat.v1.get_variable("moving_variance", [filters[stage]], trainable=False)
                if training:
                    x, batch_mean, batch_var = tf.compat.v1.nn.fused_batch_norm(
                        x, gamma, beta, epsilon=BN_EPSILON, is_training=True)
                    moving_averages.assign_moving_average(mean, batch_mean, BN_DECAY, zero_debias=True)
                    moving_averages.assign_moving_average(variance, batch_var, BN_DECAY, zero_debias=False)
                else:
                    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
                        x, gamma, beta, mean=mean, variance=variance, epsilon=BN_EPSILON, is_training=False)
            x = tf.nn.relu(x)
            if i in POOL_AFTER:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
            if i == BRANCH_AFTER:
                branch = tf.reduce_mean(x, axis=[1, 2])  # tflearn global_avg_pool
        x = tf.concat([tf.reduce_mean(x, axis=[1, 2]), branch], axis=1)
        with tf.compat.v1.variable_scope("dense"):
            kernel = tf.compat.v1.get_variable("kernel", [x.shape[-1], feature_dim])
            bias = tf.compat.v1.get_variable("bias", [feature_dim])
    return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def _value_for(name, shape, rng):
    """Random values with sensible magnitudes; moving variance positive; zero-debias pieces consistent."""
    if name.endswith("/local_step"):
        return np.float32(TRAIN_STEPS)
    if name == "beta1_power":
        return np.float32(0.5 ** TRAIN_STEPS)
    if name == "beta2_power":
        return np.float32(0.999 ** TRAIN_STEPS)
    if name.endswith("moving_variance"):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if name.endswith("gamma"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith("/kernel"):
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)  # biases, beta, moving_mean, Z, C, slots


def make_tf1_checkpoint(prefix, images, *, filters=(64, 128, 256, 512), num_subspaces=12, num_codewords=16, subspace_dim=12,
                        num_classes=10, seed=0):
    """Build the original's variables and graph, fill them randomly, save to `prefix` with a TF1 Saver.

    Returns a dict: `features` (N, M*d) float32, F(images) computed by the TF1 graph in inference mode;
    `values` {checkpoint name: array} of every saved variable; `Z` and `C`.
    """
    rng = np.random.default_rng(seed)
    feature_dim = num_subspaces * subspace_dim
    images = np.asarray(images, np.float32)
    graph = tf.Graph()
    with graph.as_default():
        # GPQ.__init__ creates Z and C first; F then runs twice in training mode (labeled and unlabeled
        # streams, AUTO_REUSE) and once for inference (Demo.py).
        z = tf.compat.v1.get_variable("Z", [num_codewords, feature_dim])
        c = tf.compat.v1.get_variable("C", [num_classes, feature_dim])
        x = tf.compat.v1.placeholder(tf.float32, [None, *images.shape[1:]], name="x")
        x_t = tf.compat.v1.placeholder(tf.float32, [None, *images.shape[1:]], name="x_T")
        f_s = _forward(x, filters, feature_dim, training=True)
        f_t = _forward(x_t, filters, feature_dim, training=True)
        loss = tf.reduce_mean(tf.square(f_s)) + tf.reduce_mean(f_t) + tf.reduce_sum(z) + tf.reduce_sum(c)
        tf.compat.v1.train.AdamOptimizer(learning_rate=2e-4, beta1=0.5).minimize(loss)
        features = _forward(x, filters, feature_dim, training=False)
        variables = tf.compat.v1.global_variables()
        placeholders = {v.op.name: tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape) for v in variables}
        assigns = [v.assign(placeholders[v.op.name]) for v in variables]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = {v.op.name: _value_for(v.op.name, tuple(v.shape), rng) for v in variables}
            for name, value in values.items():  # the biased accumulator: moving_mean * (1 - decay^t)
                if name.endswith("/biased"):
                    mean_name = name[: -len("/biased")].split("/", 2)[-1]
                    values[name] = (values[mean_name] * (1 - BN_DECAY ** TRAIN_STEPS)).astype(np.float32)
            sess.run(assigns, {placeholders[name]: value for name, value in values.items()})
            out = sess.run(features, {x: images})
            saver.save(sess, str(prefix), write_meta_graph=True)
    return {"features": out, "values": values, "Z": values["Z"], "C": values["C"]}


def write_checkpoint(prefix, tensors):
    """Save {checkpoint name: array} under exactly those names with a TF1 Saver (for broken checkpoints)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.Variable(np.asarray(value), name=f"v{i}")
                     for i, (name, value) in enumerate(sorted(tensors.items()))}
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False)


def read_checkpoint(prefix):
    """{name: array} of every variable in a checkpoint."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
