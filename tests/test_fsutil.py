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


# -- disk faults and the leftovers of killed writes ------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys
from digitlab.fsutil import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], env=env, timeout=120)
    assert proc.returncode == -9


def test_temp_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.safetensors"
    target.write_bytes(b"previous")
    _killed_write(target)
    left = [p for p in os.listdir(tmp_path) if p != target.name]
    assert len(left) == 1 and left[0].startswith(".checkpoint.safetensors.") and left[0].endswith(".tmp")
    assert target.read_bytes() == b"previous"  # the killed write changed nothing
    other = tmp_path / "other.bin"
    atomic_write_bytes(other, b"x")  # another target's write leaves it alone
    assert left[0] in os.listdir(tmp_path)
    atomic_write_bytes(target, b"next")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.safetensors", "other.bin"]
    assert target.read_bytes() == b"next"


def test_temps_of_live_writers_and_recent_pidless_temps_are_kept(tmp_path):
    import time

    from digitlab.fsutil import STALE_AGE_S, clean_stale_temps

    target = tmp_path / "model.bin"
    live = tmp_path / f".model.bin.{os.getpid()}-abcdefgh.tmp"  # this process: a write in progress
    parent = tmp_path / f".model.bin.{os.getppid()}-abcdefgh.tmp"
    recent = tmp_path / ".model.bin.abcdefgh.tmp"  # older naming, no pid: judged by age
    old = tmp_path / ".model.bin.zyxwvuts.tmp"
    lookalike = tmp_path / ".model.bin.backup.tmp"  # not a name atomic_write makes
    for p in (live, parent, recent, old, lookalike):
        p.write_bytes(b"x")
    past = time.time() - STALE_AGE_S - 60
    os.utime(old, (past, past))
    os.utime(lookalike, (past, past))
    assert clean_stale_temps(target) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, parent, recent, lookalike))


@pytest.mark.parametrize("code", [28, 30, 13, 122])  # ENOSPC, EROFS, EACCES, EDQUOT
def test_disk_fault_while_writing_is_one_clear_error_and_no_temp(tmp_path, code):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")
    with pytest.raises(DigitlabError) as err:
        with atomic_write(target) as f:
            f.write(b"half")
            raise OSError(code, os.strerror(code))
    assert str(err.value) == f"{target}: cannot write here: {os.strerror(code)}"
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_disk_fault_on_fsync_is_one_clear_error(tmp_path, monkeypatch):
    import digitlab.fsutil as fsutil

    def full(_fd):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(DigitlabError, match=r"model.bin: cannot write here: No space left on device$"):
        atomic_write_bytes(tmp_path / "model.bin", b"x" * 100)
    assert os.listdir(tmp_path) == []
