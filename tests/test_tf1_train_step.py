"""One training step of our Keras GPQ against the original's TF1 training step, from the same
weights.

The original's step is `tf1_reference.TF1TrainStep` (a `tf.compat.v1` restatement of train.py). Both
start from one TF1 checkpoint written by `tf1_reference.make_tf1_checkpoint`; the Keras model always
comes from `convert_tf1_checkpoint`, and every Keras weight is paired with its TF1 variable through
the converter's report, so these tests follow the converter if its mapping changes. Both take the
same non-augmented, already normalised float batches (labeled with int labels, and unlabeled, of
different sizes).

Compared: the four loss terms; the gradient of every trainable variable; every trainable variable
after Adam's first step (through `optimizer.apply` on the tape's gradients and through
`train_on_batch`); three steps in a row on a staircase with `decay_steps=1`; the moving statistics
as far as they are comparable.

Conv biases: a conv followed by training-mode batch norm has a true bias gradient of exactly 0.
- If the Keras backbone has conv biases, both frameworks return float noise (~1e-7 here) of
  different shape, and Adam's first step turns noise g into an update -lr * g / (|g| + 3.2e-7),
  anything in (-lr, lr): their gradients are checked against 0 with an absolute tolerance, their
  updates only against Adam's bound lr.
- If the converter folds them into the moving means (bias-free Keras convs: BN(x + b) with mean m is
  BN(x) with mean m - b), the TF1 biases have no Keras counterpart: their TF1 gradient is checked to
  be ~0, and the fold in the starting moving means and in the batch means of the step.

Moving statistics: the moving variance is compared with the original's. The moving mean is not
comparable: the original zero-debiases it (shared `biased` / `local_step` accumulators), Keras does
not (documented in the README) and converted models do not carry the accumulators; checked instead:
Keras' moving means follow the plain rule m <- 0.9 m + 0.1 batch mean (labeled stream first, then
unlabeled) on the very batch means the original computed per stream.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf1_reference as ref

from gpq_keras.convert import convert_tf1_checkpoint

TINY = dict(filters=(4, 8, 8, 8), num_subspaces=3, num_codewords=4, subspace_dim=4, num_classes=5)
IMAGE_SHAPE = (16, 16, 3)
OVERRIDES = {"num_subspaces": 3, "image_shape": list(IMAGE_SHAPE)}
N_LABELED, N_UNLABELED = 10, 12
LR = 2e-4
CONV_BIAS = re.compile(r"^Fixed_VGG/conv2d(?:_\d+)?/bias$")
BN_DECAY = 0.9
CONV_OF_BN = {
    f"Fixed_VGG/{bn}": f"Fixed_VGG/{conv}" for conv, bn in zip(ref.CONV_SCOPES, ref.BN_SCOPES)
}

# Building two TF1 graphs, converting three times and tracing train_on_batch take ~30 s on 2 CPU
# cores.
pytestmark = pytest.mark.large


def _batches(seed, rng=None):
    rng = rng or np.random.default_rng(seed)
    x = rng.standard_normal((N_LABELED, *IMAGE_SHAPE)).astype(np.float32)
    x_u = rng.standard_normal((N_UNLABELED, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.array(
        [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]
    )  # every class, some repeated: S has off-diagonal positives
    return x, x_u, rng.permutation(labels)


def _convert(prefix, **config):
    model, report = convert_tf1_checkpoint(
        prefix, config={**OVERRIDES, **config}, return_report=True
    )
    return model, report


def _tf1_names(model, report):
    """[(Keras variable, TF1 name)] for every model weight, paired through `report.mapped`.

    A report path is matched to `v.path` exactly or, failing that, as its unique '/'-suffix (the
    report writes `backbone/conv0/kernel`, Keras' `v.path` is `conv0/kernel`).
    """
    paths = {path: name for name, path, _ in report.mapped}
    pairs = []
    for v in model.weights:
        hits = [p for p in paths if p == v.path] or [p for p in paths if p.endswith("/" + v.path)]
        assert len(hits) == 1, f"{v.path}: matched report rows {hits}"
        pairs.append((v, paths[hits[0]]))
    assert len({name for _, name in pairs}) == len(pairs)
    return pairs


def _folded_biases(model, report):
    """TF1 conv biases with no Keras weight of their own (folded into the moving means by the
    converter)."""
    paired = {name for _, name in _tf1_names(model, report)}
    return {name for name, _, _ in report.mapped if CONV_BIAS.match(name) and name not in paired}


def _keras_start(case, name):
    """What the Keras weight paired with TF1 `name` must hold after conversion: the TF1 value, less
    the conv bias for a moving mean the converter folded it into."""
    value = case["original"]["before"][name]
    scope = name.rsplit("/", 1)[0]
    if name.endswith("/moving_mean") and CONV_OF_BN[scope] + "/bias" in case["folded"]:
        value = value - case["original"]["before"][CONV_OF_BN[scope] + "/bias"]
    return value


def _keras_step(model, x, x_u, labels):
    """Losses and gradients of `compute_losses` under a tape, then `optimizer.apply`."""
    with tf.GradientTape() as tape:
        losses = model.compute_losses(
            tf.constant(ref.to_pixels(x)),
            tf.constant(ref.to_pixels(x_u)),
            tf.constant(labels),
            training=True,
        )
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    model.optimizer.apply(grads, model.trainable_variables)
    return {k: float(v) for k, v in losses.items()}, [np.asarray(g) for g in grads]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(11)
    prefix = str(tmp_path_factory.mktemp("original") / "48bits_example.ckpt")
    written = ref.make_tf1_checkpoint(
        prefix, rng.standard_normal((2, *IMAGE_SHAPE)).astype(np.float32), seed=12, **TINY
    )
    x, x_u, labels = _batches(None, rng)
    with ref.TF1TrainStep(written["values"], image_shape=IMAGE_SHAPE, **TINY) as tf1:
        original = tf1.run(x, x_u, labels)

    tape_model, report = _convert(prefix)
    tape_model.compile()
    before = {name: v.numpy().copy() for v, name in _tf1_names(tape_model, report)}
    losses, grads = _keras_step(tape_model, x, x_u, labels)

    fit_model, _ = _convert(prefix)
    fit_model.compile()
    logs = fit_model.train_on_batch(
        {"labeled": ref.to_pixels(x), "unlabeled": ref.to_pixels(x_u)}, labels, return_dict=True
    )
    return dict(
        prefix=prefix,
        values=written["values"],
        batches=(x, x_u, labels),
        original=original,
        report=report,
        before=before,
        tape_model=tape_model,
        losses=losses,
        grads=grads,
        fit_model=fit_model,
        logs=logs,
        folded=_folded_biases(tape_model, report),
    )


def test_start_from_the_same_weights(case):
    """The converter hands Keras exactly the TF1 values the original's step started from
    (folded)."""
    for name, value in case["before"].items():
        np.testing.assert_allclose(
            value, _keras_start(case, name), rtol=1e-6, atol=1e-7, err_msg=name
        )
    assert case["original"]["learning_rate"] == pytest.approx(LR, rel=1e-7)
    assert case["folded"] in (set(), {n for n in case["original"]["grads"] if CONV_BIAS.match(n)})


def test_loss_terms_match(case):
    want = case["original"]["losses"]
    assert set(want) == set(case["losses"]) == set(ref.LOSS_TERMS)
    for name in ref.LOSS_TERMS:
        assert case["losses"][name] == pytest.approx(want[name], rel=1e-5), name
        # train_on_batch reports the loss of the step before its update: the same numbers.
        assert case["logs"][name] == pytest.approx(want[name], rel=1e-5), name
    assert abs(want["entropy_loss"]) > 0.1 and want["cls_loss"] > 0.1  # every term matters here


def _gradient_tolerance(expected):
    """Float32 noise of a gradient: the TF1 step itself, run on the same batches in another sample
    order, moves every gradient by up to ~7e-5 of the variable's largest entry (ten small-batch
    batch norms amplify rounding); Keras and TF1 differ by up to ~7e-5 too. Allowed: 2e-4 of the
    largest entry."""
    return 2e-4 * float(np.abs(expected).max())


def test_gradients_match_for_every_trainable_variable(case):
    model, want = case["tape_model"], case["original"]["grads"]
    names = dict((id(v), name) for v, name in _tf1_names(model, case["report"]))
    compared = set()
    scale = max(float(np.abs(g).max()) for g in want.values())
    for v, got in zip(model.trainable_variables, case["grads"]):
        name = names[id(v)]
        compared.add(name)
        expected = want[name]
        assert got.shape == expected.shape, name
        if CONV_BIAS.match(name):
            # True gradient exactly 0 (cancelled by the batch mean): float noise on both sides.
            np.testing.assert_allclose(got, 0.0, atol=1e-5 * scale, err_msg=name)
            np.testing.assert_allclose(expected, 0.0, atol=1e-5 * scale, err_msg=name)
        else:
            np.testing.assert_allclose(
                got, expected, rtol=0, atol=_gradient_tolerance(expected), err_msg=name
            )
    # Every trainable TF1 variable (F, Z, C) has a Keras counterpart that was compared, but for conv
    # biases folded into moving means: their true gradient is 0 and the original's is float noise.
    assert compared | case["folded"] == set(want), sorted(set(want) ^ compared)
    assert len(want) == 44 and not compared & case["folded"]
    for name in case["folded"]:
        np.testing.assert_allclose(want[name], 0.0, atol=1e-5 * scale, err_msg=name)


ADAM_EPS_HAT = 1e-8 / np.sqrt(1 - 0.999)  # Adam's first step is -lr * g / (|g| + ADAM_EPS_HAT)


def _assert_same_first_update(name, got, expected, before, grad):
    """Compare Adam's first update in units of lr: -lr * g / (|g| + 3.2e-7), ~-lr * sign(g).

    Tolerance: 2e-3 lr (float32 rounding of values ~1 is ~6e-8, i.e. ~3e-4 lr) plus the gradient
    tolerance carried through that formula (d update / d g = lr * 3.2e-7 / (|g| + 3.2e-7)^2), which
    matters only for entries whose gradient is within the noise of 0.
    """
    got_step, want_step = (got - before) / LR, (expected - before) / LR
    if CONV_BIAS.match(
        name
    ):  # noise gradient: only Adam's bound |update| <= lr holds on both sides
        assert np.abs(got_step).max() <= 1 + 1e-3 and np.abs(want_step).max() <= 1 + 1e-3, name
        return
    np.testing.assert_allclose(
        want_step, -grad / (np.abs(grad) + ADAM_EPS_HAT), atol=2e-3, err_msg=name
    )
    carried = _gradient_tolerance(grad) * ADAM_EPS_HAT / (np.abs(grad) + ADAM_EPS_HAT) ** 2
    excess = np.abs(got_step - want_step) - (2e-3 + np.minimum(carried, 2.0))
    assert excess.max() <= 0, (name, float(np.abs(got_step - want_step).max()))


@pytest.mark.parametrize("path", ["optimizer.apply", "train_on_batch"])
def test_variables_after_one_adam_step_match(case, path):
    model = case["tape_model"] if path == "optimizer.apply" else case["fit_model"]
    original = case["original"]
    moved = 0
    for v, name in _tf1_names(model, case["report"]):
        if not v.trainable:
            continue
        before, after = original["before"][name], original["values"][name]
        _assert_same_first_update(name, v.numpy(), after, before, original["grads"][name])
        if not CONV_BIAS.match(name):
            moved += np.count_nonzero(np.abs(after - before) > 0.5 * LR)
    assert moved > 1000  # the step really moved the weights, by about lr each


def test_moving_means_follow_the_originals_per_stream_batch_means(case):
    """Each stream is normalised with its own statistics, and both update the moving means in order:
    Keras' m <- 0.9 m + 0.1 mean, labeled stream first, on the original's batch means (less a folded
    conv bias: the batch mean absorbs it). The original's own moving means are zero-debiased (not
    compared)."""
    original = case["original"]
    for model in (
        case["fit_model"],
        case["tape_model"],
    ):  # train_on_batch, and compute_losses under a tape
        checked = 0
        for v, name in _tf1_names(model, case["report"]):
            if not name.endswith("/moving_mean"):
                continue
            scope = name.rsplit("/", 1)[0]
            expected = _keras_start(case, name).astype(np.float64)
            for stream in ("labeled", "unlabeled"):
                (stats,) = [st for st in original["stats"][stream] if st["scope"] == scope]
                batch_mean = stats["mean"].astype(np.float64)
                if CONV_OF_BN[scope] + "/bias" in case["folded"]:
                    batch_mean = batch_mean - original["before"][CONV_OF_BN[scope] + "/bias"]
                expected = BN_DECAY * expected + (1 - BN_DECAY) * batch_mean
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
            checked += 1
        assert checked == 10


def test_moving_variances_match_the_original(case):
    """The original feeds the Bessel-corrected batch variance (x n / (n - 1), n = B*H*W per stream,
    here 40..3072) of each stream to the moving average, in order; no zero-debias: directly
    comparable."""
    want = case["original"]["values"]
    for model in (case["fit_model"], case["tape_model"]):
        checked = 0
        for v, name in _tf1_names(model, case["report"]):
            if name.endswith("/moving_variance"):
                np.testing.assert_allclose(v.numpy(), want[name], rtol=1e-5, err_msg=name)
                checked += 1
        assert checked == 10


def test_the_originals_moving_statistics_are_zero_debiased_and_bessel_corrected(case):
    """What the reference does with the moving statistics, i.e. what Keras is not asked to match:
    the mean through the zero-debias accumulators both streams share (local_step advances by 2 per
    training step), the variance as a plain moving average of the Bessel-corrected batch
    variances."""
    original = case["original"]
    before, after = original["before"], original["values"]
    for scope in CONV_OF_BN:
        biased, local_step = (f"{scope}/{scope}/moving_mean/{n}" for n in ("biased", "local_step"))
        mean, var = (
            before[biased].astype(np.float64),
            before[f"{scope}/moving_variance"].astype(np.float64),
        )
        for stream in ("labeled", "unlabeled"):
            (stats,) = [st for st in original["stats"][stream] if st["scope"] == scope]
            mean = BN_DECAY * mean + (1 - BN_DECAY) * stats["mean"]
            var = BN_DECAY * var + (1 - BN_DECAY) * stats["variance"]
        assert after[local_step] == before[local_step] + 2
        np.testing.assert_allclose(after[biased], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            after[f"{scope}/moving_mean"],
            mean / (1 - BN_DECAY ** after[local_step]),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(after[f"{scope}/moving_variance"], var, rtol=1e-5)


def test_three_steps_on_a_staircase_match(case):
    """Adam past its first step (no longer ~lr * sign(g)) and the staircase: decay every step here.

    Entries whose gradient came within ten times the float32 noise of 0 at some step (Adam turns
    such noise into updates of any size up to ~lr) are left out of the value comparison; the rest,
    at least 90% of all entries, must agree to 1e-2 lr after each step.
    """
    decay = dict(decay_steps=1)
    model, report = _convert(case["prefix"], **decay)
    model.compile()
    pairs = [
        (v, name)
        for v, name in _tf1_names(model, report)
        if v.trainable and not CONV_BIAS.match(name)
    ]
    clean = {name: True for _, name in pairs}
    rng = np.random.default_rng(21)
    with ref.TF1TrainStep(case["values"], image_shape=IMAGE_SHAPE, **decay, **TINY) as tf1:
        for step in range(3):
            x, x_u, labels = _batches(None, rng)
            lr = float(model.optimizer.learning_rate)  # the rate of the step about to run
            original = tf1.run(x, x_u, labels, step=step)
            assert lr == pytest.approx(original["learning_rate"], rel=1e-6)
            assert lr == pytest.approx(LR * 0.95**step, rel=1e-6)
            logs = model.train_on_batch(
                {"labeled": ref.to_pixels(x), "unlabeled": ref.to_pixels(x_u)},
                labels,
                return_dict=True,
            )
            for name in ref.LOSS_TERMS:
                assert logs[name] == pytest.approx(original["losses"][name], rel=1e-4), (step, name)
            for v, name in pairs:
                grad = original["grads"][name]
                clean[name] = clean[name] & (np.abs(grad) > 10 * _gradient_tolerance(grad))
                got, want = v.numpy(), original["values"][name]
                np.testing.assert_allclose(
                    ((got - want) / lr)[clean[name]], 0.0, atol=1e-2, err_msg=f"step {step}: {name}"
                )
            kept = sum(int(c.sum()) for c in clean.values()) / sum(c.size for c in clean.values())
            assert kept >= 0.9, (step, kept)
