"""atomic_write: all or nothing, and ordinary file permissions."""

import os
import stat

import pytest

from digitlab.errors import DigitlabError
from digitlab.fsutil import _FILE_MODE, atomic_write, atomic_write_bytes


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == _FILE_MODE
    assert os.listdir(target.parent) == ["model.bin"]


def test_atomic_write_leaves_old_file_and_no_temp_on_error(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_unwritable_place_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DigitlabError, match=r"file/run/model.bin: cannot write here: .*/file is a file, not a folder"):
        atomic_write_bytes(blocker / "run" / "model.bin", b"x")
