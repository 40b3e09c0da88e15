"""File-system helpers: every file digitlab writes goes through `atomic_write`.

    with atomic_write("runs/x/model.safetensors") as f:
        f.write(data)

The data goes to a temporary file in the same folder and is renamed onto the target only after it was
written and flushed completely, so a crash or Ctrl-C never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from digitlab.errors import DigitlabError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import (os.umask is process-wide and not thread-safe to poke later). mkstemp creates files
# with mode 0600; the finished file gets the mode a plain open() would have given it.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a file where a folder should be, no permission, read-only disk, ...
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
        raise DigitlabError(f"{path}: cannot write here: {why}") from None
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
