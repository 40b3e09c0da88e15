"""Read and write IDX files (the MNIST format), gzip-compressed or raw, every element type, any rank.

    from digitlab.data.idx import read_idx, write_idx
    images = read_idx("t10k-images-idx3-ubyte.gz")            # uint8 (10000, 28, 28)
    images, sha = read_idx("t10k-images-idx3-ubyte", sha256=True)   # + sha256 of the uncompressed bytes
    write_idx("out/labels-idx1-ubyte.gz", labels)              # gzip when the name ends in .gz

Format: a big-endian header — two zero bytes, a type code, the number of dimensions, then one uint32 per
dimension — followed by exactly prod(dims) big-endian elements. Compression is detected from the magic
bytes (1f 8b), never from the file name. Every problem raises `IdxFormatError` (a `digitlab.DataError`)
whose message starts with the file name, e.g.
"t10k-images-idx3-ubyte.gz: truncated: header says 10000×28×28 = 7840000 bytes, found 7839000".

Reading streams the payload in 1 MiB pieces straight into a preallocated array of the size the header
declares (no second copy of the data, even for gzip), refuses a payload longer or shorter than declared,
and refuses headers declaring more than `MAX_BYTES` (or more than the file could hold), so memory is
bounded by the declared size whatever the file. Only regular files are opened (a FIFO would block).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from digitlab.errors import DataError
from digitlab.fsutil import NotRegularFileError, atomic_write, open_regular

__all__ = ["IdxFormatError", "IDX_TYPES", "MAX_BYTES", "MAX_NDIM", "read_idx", "write_idx", "is_gzip"]

# type code -> (big-endian dtype on disk, name used in the IDX spec)
IDX_TYPES: dict[int, tuple[np.dtype, str]] = {
    0x08: (np.dtype("u1"), "ubyte"),
    0x09: (np.dtype("i1"), "byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
_CODE_BY_KIND = {(np.dtype(dt).kind, np.dtype(dt).itemsize): code for code, (dt, _) in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# Largest payload read_idx accepts by default: 16× full MNIST's training images (47 MB), room for EMNIST.
MAX_BYTES = 1 << 30
MAX_NDIM = 64  # NumPy's limit on array dimensions


class IdxFormatError(DataError):
    """An IDX file is missing, unreadable, corrupt or not an IDX file at all."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def is_gzip(path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open_regular(path) as f:
        return f.read(2) == _GZIP_MAGIC


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith(b"<") and any(tag in text for tag in (b"<html", b"<!doctype", b"<head", b"<body", b"<title"))


def _describe_types() -> str:
    return ", ".join(f"0x{code:02X} {name}" for code, (_, name) in IDX_TYPES.items())


def _read_exact(stream, n: int) -> bytes:
    """Read up to n bytes, looping over short reads."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _readinto_full(stream, buf: memoryview) -> int:
    """Fill buf from the stream; return the number of bytes read (less than len(buf) at end of file).

    At most _CHUNK bytes per call: GzipFile.readinto(buf) allocates a bytes object of len(buf) and copies it,
    which would hold the payload twice."""
    got = 0
    n = len(buf)
    while got < n:
        k = stream.readinto(buf[got : got + _CHUNK])
        if not k:
            break
        got += k
    return got


def _count_rest(stream) -> int:
    extra = 0
    while True:
        part = stream.read(_CHUNK)
        if not part:
            return extra
        extra += len(part)


def _parse_header(path, stream) -> tuple[np.dtype, tuple[int, ...], bytes]:
    head = _read_exact(stream, 4)
    if not head:
        raise IdxFormatError(path, "empty file (0 bytes of IDX data)")
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        if _looks_like_html(head + _read_exact(stream, 1024)):
            raise IdxFormatError(
                path, "is an HTML page, not IDX data (a web server's error page saved under this name?)"
            )
        magic = int.from_bytes(head.ljust(4, b"\0"), "big")
        raise IdxFormatError(
            path,
            f"bad magic 0x{magic:08X} ({magic}): not an IDX file (IDX data starts with two zero bytes, "
            "a type code and the number of dimensions)",
        )
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        raise IdxFormatError(path, f"unknown IDX type code 0x{code:02X} (expected one of {_describe_types()})")
    if ndim == 0:
        raise IdxFormatError(path, "header declares 0 dimensions")
    if ndim > MAX_NDIM:
        raise IdxFormatError(path, f"header declares {ndim} dimensions; at most {MAX_NDIM} are supported")
    dims_raw = _read_exact(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise IdxFormatError(
            path,
            f"truncated header: {ndim} dimensions need {4 + 4 * ndim} header bytes, found {4 + len(dims_raw)}",
        )
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    return IDX_TYPES[code][0], dims, head + dims_raw


def _size_text(dims: tuple[int, ...], itemsize: int, nbytes: int) -> str:
    shape = "×".join(str(d) for d in dims)
    per = "" if itemsize == 1 else f" × {itemsize}-byte elements"
    return f"header says {shape}{per} = {nbytes} bytes"


def _read_stream(path, stream, sha256: bool, size_on_disk: int, compressed: bool, max_bytes: int):
    dtype, dims, header = _parse_header(path, stream)
    nbytes = math.prod(dims) * dtype.itemsize
    # Refuse before allocating when the header claims more than the file can hold (a corrupt header must
    # not ask for terabytes): raw -> exactly the bytes after the header; gzip -> deflate's 1032:1 ceiling.
    if not compressed and nbytes > size_on_disk - len(header):
        found = size_on_disk - len(header)
        raise IdxFormatError(path, f"truncated: {_size_text(dims, dtype.itemsize, nbytes)}, found {found}")
    if compressed and nbytes > 1032 * size_on_disk + 1024:
        raise IdxFormatError(
            path,
            f"truncated: {_size_text(dims, dtype.itemsize, nbytes)}, more than a {size_on_disk}-byte gzip file "
            "can hold",
        )
    # A 0 among the dimensions makes the payload empty, but NumPy still refuses a shape whose other
    # dimensions multiply past its index range: judge the shape with zeros counted as ones.
    shape_bytes = math.prod(max(d, 1) for d in dims) * dtype.itemsize
    if shape_bytes > max_bytes:
        if nbytes:
            raise IdxFormatError(path, f"too large: {_size_text(dims, dtype.itemsize, nbytes)}; "
                                       f"the limit is {max_bytes} bytes")  # fmt: skip
        shape = "×".join(map(str, dims))
        raise IdxFormatError(path, f"implausible shape {shape}: empty, but its non-zero dimensions multiply to "
                                   f"{shape_bytes} bytes (limit {max_bytes})")  # fmt: skip
    try:
        out = np.empty(dims, dtype=dtype)  # big-endian layout, as on disk
    except (ValueError, MemoryError) as exc:
        raise IdxFormatError(path, f"cannot hold {_size_text(dims, dtype.itemsize, nbytes)}: {exc}") from None
    got = _readinto_full(stream, memoryview(out.reshape(-1).view(np.uint8)))
    if got < nbytes:
        raise IdxFormatError(path, f"truncated: {_size_text(dims, dtype.itemsize, nbytes)}, found {got}")
    extra = _count_rest(stream) if compressed else size_on_disk - len(header) - nbytes
    if extra:
        raise IdxFormatError(
            path,
            f"trailing bytes: {_size_text(dims, dtype.itemsize, nbytes)}, found {nbytes + extra} ({extra} extra)",
        )
    digest = None
    if sha256:
        h = hashlib.sha256(header)
        h.update(memoryview(out.reshape(-1).view(np.uint8)))
        digest = h.hexdigest()
    if dtype.itemsize > 1 and dtype.byteorder not in ("=", "|"):
        out = out.byteswap(inplace=True).view(dtype.newbyteorder("="))  # to native order, no second copy
    return out, digest


def read_idx(path, *, sha256: bool = False, max_bytes: int = MAX_BYTES):
    """Read one IDX file (gzip or raw) into a native-endian array.

    Returns the array, or `(array, sha256_hex_of_uncompressed_bytes)` when `sha256=True`.
    Raises `IdxFormatError` naming the file for every kind of bad input, including a header that declares
    more than `max_bytes` of payload.
    """
    path = Path(path)
    try:
        raw = open_regular(path)
    except IsADirectoryError:
        raise IdxFormatError(path, "is a directory, expected an IDX file") from None
    except FileNotFoundError:
        raise IdxFormatError(path, "no such file") from None
    except NotRegularFileError as exc:
        raise IdxFormatError(path, f"{exc.strerror}, expected an IDX file") from None
    except OSError as exc:
        raise IdxFormatError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        with raw:
            magic = raw.read(2)
            raw.seek(0)
            size = os.fstat(raw.fileno()).st_size
            if magic == _GZIP_MAGIC:
                try:
                    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                        arr, digest = _read_stream(path, stream, sha256, size, True, max_bytes)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise IdxFormatError(path, f"broken gzip stream ({exc})") from None
            else:
                arr, digest = _read_stream(path, raw, sha256, size, False, max_bytes)
    except IsADirectoryError:
        raise IdxFormatError(path, "is a directory, expected an IDX file") from None
    except OSError as exc:
        if isinstance(exc, IdxFormatError):
            raise
        raise IdxFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    return (arr, digest) if sha256 else arr


def idx_bytes(array) -> bytes:
    """The uncompressed IDX encoding of an array (header + big-endian payload)."""
    arr = np.asarray(array)
    code = _CODE_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(f"cannot store dtype {arr.dtype} in IDX (types: {_describe_types()})")
    if arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, array has {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise DataError(f"IDX dimensions must be below 2**32, array has shape {arr.shape}")
    disk = IDX_TYPES[code][0]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=disk).tobytes()


def write_idx(path, array, *, compress: bool | None = None, compresslevel: int = 9) -> Path:
    """Write `array` as an IDX file atomically; gzip (deterministic, mtime 0) when `compress` or name ends .gz."""
    path = Path(path)
    data = idx_bytes(array)
    if compress is None:
        compress = path.suffix == ".gz"
    with atomic_write(path, "wb") as f:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=compresslevel, mtime=0) as gz:
                gz.write(data)
        else:
            f.write(data)
    return path
