import io
import os
import pickle
import struct

import numpy as np
import pytest

from gpq_keras.files import FileFormatError, atomic_path, check_mat5, restricted_load


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.npz"
    with atomic_path(target) as tmp:
        assert tmp.endswith(".npz") and os.path.dirname(tmp) == str(target.parent)
        with open(tmp, "w") as fh:
            fh.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".x") as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "first"
    assert os.listdir(target.parent) == ["out.npz"]


def test_restricted_load_rebuilds_plain_data_and_refuses_the_rest():
    value = {
        b"data": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "labels": [1, 2],
        "n": np.int64(3),
    }
    loaded = restricted_load(pickle.dumps(value, protocol=2))
    np.testing.assert_array_equal(loaded[b"data"], value[b"data"])
    assert loaded["labels"] == [1, 2] and loaded["n"] == 3
    assert restricted_load(pickle.dumps([1, "a"]), expected=list) == [1, "a"]
    with pytest.raises(pickle.UnpicklingError, match="^expected a dict, got list$"):
        restricted_load(pickle.dumps([1]))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global 'builtins.eval'"):
        restricted_load(pickle.dumps({"f": eval}))
    with pytest.raises(pickle.UnpicklingError, match=r"^unexpected float at top level\['x'\]$"):
        restricted_load(pickle.dumps({"x": 1.5}))
    with pytest.raises(pickle.UnpicklingError, match="^object arrays are not allowed$"):
        restricted_load(pickle.dumps({"x": np.array([None])}))
    with pytest.raises(EOFError):
        restricted_load(pickle.dumps({"x": 1})[:-1])  # no STOP opcode


def test_check_mat5_walks_the_named_variable_and_raises_the_given_error(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    buffer = io.BytesIO()
    scipy_io.savemat(buffer, {"other": np.ones(2), "mine": np.eye(3)})
    data = buffer.getvalue()
    check_mat5("m.mat", data, "mine")  # well formed: nothing raised
    check_mat5("m.mat", data, "absent")  # no such variable: left to scipy
    bad = bytearray(data)
    name = bad.index(b"mine")
    tag = name + 4  # the real part's tag follows the name, a small element of 4 bytes
    struct.pack_into("<I", bad, tag, 24)  # no MAT 5 element type 24
    with pytest.raises(FileFormatError) as info:
        check_mat5("m.mat", bytes(bad), "mine")
    assert str(info.value) == (
        "m.mat: not a readable .mat file "
        "(ValueError: part 1 of 'mine' has element type 24, not a number type)"
    )

    class Mine(FileFormatError):
        pass

    with pytest.raises(Mine):
        check_mat5("m.mat", data[: len(data) - 5], "mine", Mine)
