"""File-system helpers: every file digitlab writes goes through `atomic_write`; input files are opened
with `open_regular`.

    with atomic_write("runs/x/model.safetensors") as f:
        f.write(data)
    with open_regular("data/t10k-labels-idx1-ubyte") as f:   # NotRegularFileError for a FIFO, device, ...
        head = f.read(8)

The data goes to a temporary file `.<name>.<pid>-<random>.tmp` in the same folder and is renamed onto the
target only after it was written and flushed completely, so a crash or Ctrl-C never leaves a half-written
file behind. A process killed hard (kill -9, power loss) leaves its temporary file; the next write to the
same target removes it (`clean_stale_temps`) once the pid in its name is no longer running. A temporary
file of a live process is never touched, whatever its age; names without a pid (written by older versions)
are removed once untouched for `STALE_AGE_S`.
A disk or permission fault (full disk, read-only file system, no permission) becomes one `DigitlabError`
naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from digitlab.errors import DigitlabError

STALE_AGE_S = 15 * 60  # a pid-less temporary file untouched this long is a leftover, not a write in progress
_PID_TEMP = re.compile(r"(\d+)-[a-z0-9_]{8}")  # middle part of ".<name>.<pid>-<random>.tmp"
_LEGACY_TEMP = re.compile(r"[a-z0-9_]{8}")  # middle part of ".<name>.<random>.tmp" (older versions)
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))  # fmt: skip


class NotRegularFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket): reading it could block or never end."""


def describe_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path):
    """Open `path` for binary reading, refusing anything but a regular file without blocking on it.

    O_NONBLOCK makes opening a FIFO return at once (a plain open() waits for a writer); the kind is then
    checked on the open descriptor, so a file swapped in between cannot slip through. Raises
    IsADirectoryError, NotRegularFileError (strerror "is a FIFO (named pipe), not a regular file") or the
    OSError of open().
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"is {describe_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import (os.umask is process-wide and not thread-safe to poke later). mkstemp creates files
# with mode 0600; the finished file gets the mode a plain open() would have given it.
_FILE_MODE = 0o666 & ~_read_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def clean_stale_temps(path) -> list[Path]:
    """Remove the temporary files and folders of earlier, killed writes to `path`; return what was removed.

    A `.<name>.<pid>-<random>.tmp` is removed only when no process with that pid runs (a live writer, this
    process included, keeps its file); a pid-less `.<name>.<random>.tmp` file only after STALE_AGE_S
    untouched. Best effort: anything that cannot be removed is left alone.
    """
    path = Path(path)
    prefix, removed = f".{path.name}.", []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix) : -len(".tmp")]
        try:
            if entry.is_symlink():
                continue
            m = _PID_TEMP.fullmatch(middle)
            if m:
                stale = not _pid_alive(int(m.group(1)))
            else:
                stale = (entry.is_file() and bool(_LEGACY_TEMP.fullmatch(middle))
                         and now - entry.stat().st_mtime > STALE_AGE_S)  # fmt: skip
            if not stale:
                continue
            if entry.is_dir():
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def temp_path_for(path) -> tuple[int, Path]:
    """(fd, name) of a new temporary file beside `path`, named so that `clean_stale_temps(path)` knows it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def temp_dir_for(path) -> Path:
    """A new temporary folder beside `path`, named so that `clean_stale_temps(path)` knows it."""
    path = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))


def _write_error(path: Path, exc: OSError) -> DigitlabError:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
    return DigitlabError(f"{path}: cannot write here: {why}")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = temp_path_for(path)
    except OSError as exc:  # a file where a folder should be, no permission, read-only disk, ...
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:  # full disk, read-only, quota, I/O error
            raise _write_error(path, exc) from None
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
