import pytest

from gpq_keras.config import PRESETS, GPQConfig, get_preset


def test_defaults_are_the_original_48_bit_setting():
    c = GPQConfig()
    assert (c.num_subspaces, c.num_codewords, c.subspace_dim, c.num_classes) == (12, 16, 12, 10)
    assert (c.alpha, c.beta, c.lambda1, c.lambda2, c.reg_lambda) == (20.0, 4.0, 0.1, 0.1, 0.002)
    assert (c.learning_rate, c.decay_steps, c.decay_rate, c.beta_1, c.epsilon) == (
        2e-4,
        100,
        0.95,
        0.5,
        1e-8,
    )
    assert c.feature_dim == 144 and c.bits == 48 and c.image_shape == (32, 32, 3)
    assert c.retrieval_mode == "consistent"  # measured better on the embedded data (README)


@pytest.mark.parametrize("bits, books", [(12, 3), (24, 6), (32, 8), (48, 12)])
def test_from_bits_and_presets(bits, books):
    c = GPQConfig.from_bits(bits)
    assert c.num_subspaces == books and c.bits == bits
    assert PRESETS[f"gpq_cifar10_{bits}bit"] == c
    assert get_preset(f"gpq_cifar10_{bits}bit").bits == bits


def test_dict_round_trip():
    c = GPQConfig(
        num_subspaces=4, filters=(8, 8, 8, 8), retrieval_mode="original", sync_batch_norm=True
    )
    assert GPQConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_codewords": 12}, "num_codewords"),
        ({"num_codewords": 1}, "num_codewords"),
        ({"num_codewords": 512}, "num_codewords"),
        ({"num_subspaces": 0}, "num_subspaces"),
        ({"subspace_dim": 2.0}, "subspace_dim"),
        ({"alpha": -1.0}, "alpha"),
        ({"beta": -4}, "beta"),
        ({"lambda1": float("nan")}, "lambda1"),
        ({"reg_lambda": -0.1}, "reg_lambda"),
        ({"beta_1": 1.0}, "beta_1"),
        ({"filters": (8, 8, 8)}, "filters"),
        ({"image_shape": (32, 32)}, "image_shape"),
        ({"retrieval_mode": "fast"}, "retrieval_mode"),
        ({"sync_batch_norm": 1}, "sync_batch_norm"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": "2e-4"}, "learning_rate"),
        ({"alpha": float("inf")}, "alpha"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"filters": ()}, "filters"),
        ({"filters": (8, 8, 8, 0)}, "filters"),
        ({"filters": (8, 8, 8, 8.0)}, "filters"),
        ({"filters": (8, 8, 8, True)}, "filters"),
        ({"filters": "1632"}, "filters"),
        ({"filters": 16}, "filters"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"GPQConfig.{field}"):
        GPQConfig(**kwargs)


def test_bad_bits_unknown_fields_and_presets():
    with pytest.raises(ValueError, match="bits=30"):
        GPQConfig.from_bits(30)
    with pytest.raises(ValueError, match="n_bok"):
        GPQConfig.from_dict({"n_bok": 3})
    with pytest.raises(ValueError, match="gpq_cifar10_64bit"):
        get_preset("gpq_cifar10_64bit")


def test_the_old_field_names_are_read():
    assert GPQConfig.from_dict(
        {"n_book": 3, "n_word": 4, "len_code": 5, "n_classes": 6}
    ) == GPQConfig(num_subspaces=3, num_codewords=4, subspace_dim=5, num_classes=6)
    with pytest.raises(ValueError, match="both 'n_book' and its new name 'num_subspaces'"):
        GPQConfig.from_dict({"n_book": 3, "num_subspaces": 3})


def test_numbers_that_cannot_train_are_refused_in_plain_words():
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0.*inf"):
        GPQConfig(learning_rate=float("inf"))
    with pytest.raises(ValueError, match=r"filters must be four positive ints"):
        GPQConfig(filters=(16, 32))
    assert GPQConfig(filters=[8, 8, 16, 16]).filters == (8, 8, 16, 16)  # a list is fine
