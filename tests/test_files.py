import os

import pytest

from gpq_keras.files import atomic_path


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
