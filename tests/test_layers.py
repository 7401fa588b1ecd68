import keras
import numpy as np
import numpy_reference as ref
import pytest
from test_case import gradients, run_layer_test, run_precision_test

from gpq_keras.layers import (
    GradientReversal,
    IntraNormalization,
    SoftProductQuantizer,
    SubspaceClassifier,
    intra_normalize,
    soft_assignment,
)

pytestmark = pytest.mark.backends

RNG = np.random.default_rng(0)
M, D, K, CLASSES = 4, 5, 8, 6


def _features(n=7):
    return RNG.normal(size=(n, M * D)).astype(np.float32)


def test_intra_normalization_matches_numpy():
    x = _features()
    x[0, :D] = 0.0  # an all-zero sub-vector stays zero, as with tf.nn.l2_normalize
    out = keras.ops.convert_to_numpy(IntraNormalization(M)(x))
    np.testing.assert_allclose(out, ref.intra_norm(x, M), rtol=1e-5, atol=1e-7)
    norms = np.linalg.norm(out.reshape(-1, M, D), axis=-1)
    np.testing.assert_allclose(norms[1:], 1.0, rtol=1e-5)
    assert np.all(out[0, :D] == 0)


def test_soft_assignment_matches_numpy_loop():
    x, z = (
        ref.intra_norm(_features(), M).astype(np.float32),
        RNG.normal(size=(K, M * D)).astype(np.float32),
    )
    out = keras.ops.convert_to_numpy(soft_assignment(x, z, M, 20.0))
    np.testing.assert_allclose(out, ref.soft_assignment(z, x, M, 20.0), rtol=1e-5, atol=1e-6)


def test_soft_product_quantizer_with_and_without_prototypes():
    x = ref.intra_norm(_features(), M).astype(np.float32)
    layer = SoftProductQuantizer(M, K, alpha=20.0)
    out = keras.ops.convert_to_numpy(layer(x))
    z = keras.ops.convert_to_numpy(layer.codewords)
    assert z.shape == (K, M * D)
    np.testing.assert_allclose(out, ref.soft_assignment(z, x, M, 20.0), rtol=1e-5, atol=1e-6)

    p = ref.intra_norm(RNG.normal(size=(CLASSES, M * D)), M).astype(np.float32)
    z_refined = ref.soft_assignment(p, z, M, 20.0)  # Z' = SA(P, Z)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.codebook(p)), z_refined, rtol=1e-5, atol=1e-6
    )
    out = keras.ops.convert_to_numpy(layer(x, prototypes=p))
    # Z' carries float32 rounding (1e-7) that the second soft assignment (alpha=20) amplifies: a
    # float32 NumPy run of the same sums lands up to 2.6e-6 away
    np.testing.assert_allclose(
        out, ref.soft_assignment(z_refined, x, M, 20.0), rtol=1e-5, atol=5e-6
    )


def test_subspace_classifier_matches_numpy():
    f = ref.intra_norm(_features(), M).astype(np.float32)
    layer = SubspaceClassifier(CLASSES, M, beta=4.0)
    logits = keras.ops.convert_to_numpy(layer(f))
    c = keras.ops.convert_to_numpy(layer.prototypes)
    assert c.shape == (CLASSES, M * D)
    np.testing.assert_allclose(
        logits, ref.classifier_logits(f, ref.intra_norm(c, M), M, 4.0), rtol=1e-5, atol=1e-6
    )


def test_gradient_reversal_identity_forward_negated_backward():
    x = keras.Variable(_features())
    layer = GradientReversal(scale=1.0)
    weights = RNG.normal(size=(M * D,)).astype(np.float32)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(x)
    )
    (plain,) = gradients(lambda: keras.ops.sum(x * weights), [x])
    (reversed_,) = gradients(lambda: keras.ops.sum(keras.ops.multiply(layer(x), weights)), [x])
    np.testing.assert_allclose(plain, np.broadcast_to(weights, x.shape), rtol=1e-6)
    np.testing.assert_allclose(reversed_, -plain, rtol=1e-6)
    half = GradientReversal(scale=0.5)
    (grad,) = gradients(lambda: keras.ops.sum(keras.ops.multiply(half(x), weights)), [x])
    np.testing.assert_allclose(grad, -0.5 * np.broadcast_to(weights, x.shape), rtol=1e-6)


def _normalized(rows):
    return ref.intra_norm(RNG.normal(size=(rows, M * D)), M).astype(np.float32)


def test_intra_normalization_basics():
    run_layer_test(
        IntraNormalization,
        init_kwargs={"num_subspaces": M},
        input_data=_features(3),
        expected_output_shape=(3, M * D),
    )


def test_soft_product_quantizer_basics():
    run_layer_test(
        SoftProductQuantizer,
        init_kwargs={"num_subspaces": M, "num_codewords": K, "alpha": 10.0},
        input_data=_normalized(3),
        call_kwargs={"prototypes": _normalized(CLASSES)},
        expected_output_shape=(3, M * D),
        expected_num_trainable_weights=1,
    )


def test_subspace_classifier_basics():
    run_layer_test(
        SubspaceClassifier,
        init_kwargs={"num_classes": CLASSES, "num_subspaces": M, "beta": 2.0},
        input_data=_normalized(3),
        expected_output_shape=(3, CLASSES),
        expected_num_trainable_weights=1,
    )


def test_gradient_reversal_basics():
    run_layer_test(
        GradientReversal,
        init_kwargs={"scale": 0.5},
        input_data=_features(3),
        expected_output_shape=(3, M * D),
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("sub_vector_scale", [0.0, 1e-5, 1e3])
def test_intra_normalization_mixed_precision_extreme_norms(policy, sub_vector_scale):
    x = _features(3)
    x[1, D : 2 * D] *= sub_vector_scale  # one zero, tiny or huge sub-vector among ordinary ones
    run_precision_test(IntraNormalization, {"num_subspaces": M}, x, policies=(policy,))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IntraNormalization(0), "num_subspaces=0"),
        (lambda: SoftProductQuantizer(4, 2.5), "num_codewords=2.5"),
        (lambda: SoftProductQuantizer(4, 16, alpha=-1.0), "alpha=-1.0"),
        (lambda: SubspaceClassifier(10, 4, beta=-2), "beta=-2"),
        (lambda: GradientReversal(scale="x"), "scale='x'"),
    ],
)
def test_bad_layer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_indivisible_feature_dimension_is_refused():
    with pytest.raises(ValueError, match="divisible by num_subspaces=4"):
        SoftProductQuantizer(4, 8)(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="divisible by num_subspaces=3"):
        intra_normalize(np.zeros((2, 10), np.float32), 3)
