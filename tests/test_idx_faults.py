"""IDX reader against hostile files: absurd headers, gzip bombs, FIFOs, and a fuzz run (clean errors only)."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from fault_helpers import FUZZ_RSS_GROWTH, error_without_blocking, peak_rss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digitlab.data.idx import MAX_BYTES, IdxFormatError, idx_bytes, read_idx


def header(code: int, dims) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def gzip_bomb(path, declared: int, actual: int | None = None) -> None:
    """A small gzip file whose IDX header declares `declared` uint8 bytes and holds `actual` zero bytes."""
    actual = declared if actual is None else actual
    co = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    with open(path, "wb") as f:
        f.write(co.compress(header(0x08, [declared])))
        zeros = bytes(1 << 20)
        for start in range(0, actual, len(zeros)):
            f.write(co.compress(zeros[: min(len(zeros), actual - start)]))
        f.write(co.flush())


def test_more_dimensions_than_numpy_allows(tmp_path):
    path = tmp_path / "d65"
    path.write_bytes(header(0x08, [1] * 65) + b"\0")
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: header declares 65 dimensions; at most 64 are supported"


def test_sixty_four_dimensions_still_read(tmp_path):
    path = tmp_path / "d64"
    path.write_bytes(header(0x08, [1] * 64) + b"\x07")
    arr = read_idx(path)
    assert arr.shape == (1,) * 64 and arr.ravel().tolist() == [7]


def test_zero_dimension_next_to_huge_ones(tmp_path):
    path = tmp_path / "dzero"
    path.write_bytes(header(0x08, [0, 2**32 - 1, 2**32 - 1]))
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: implausible shape 0×4294967295×4294967295: empty")


def test_zero_dimension_with_small_ones_is_an_empty_array(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(header(0x08, [0, 28, 28]))
    assert read_idx(path).shape == (0, 28, 28)


def test_declared_size_above_the_cap_is_refused(tmp_path):
    path = tmp_path / "big.gz"
    gzip_bomb(path, declared=5000, actual=5000)
    with pytest.raises(IdxFormatError) as err:
        read_idx(path, max_bytes=4999)
    assert str(err.value) == f"{path}: too large: header says 5000 = 5000 bytes; the limit is 4999 bytes"
    assert read_idx(path, max_bytes=5000).shape == (5000,)


def test_default_cap_refuses_a_bomb_declaring_more(tmp_path):
    path = tmp_path / "bomb.gz"
    gzip_bomb(path, declared=MAX_BYTES + 1, actual=0)  # the ratio check lets this through only via the cap
    path.write_bytes(path.read_bytes() + bytes(2 << 20))  # padding so 1032 × size exceeds the declared size
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert f"the limit is {MAX_BYTES} bytes" in str(err.value)


@pytest.mark.parametrize("actual", [4096, 4097, 1 << 21])
def test_gzip_payload_must_match_the_declared_size(tmp_path, actual):
    path = tmp_path / "x.gz"
    gzip_bomb(path, declared=4096, actual=actual)
    if actual == 4096:
        assert read_idx(path).shape == (4096,)
        return
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == (f"{path}: trailing bytes: header says 4096 = 4096 bytes, "
                              f"found {actual} ({actual - 4096} extra)")


def test_multibyte_types_come_back_native_and_exact(tmp_path):
    arr = np.arange(-5, 5, dtype=np.int32).reshape(2, 5) * 100_000
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    out = read_idx(path)
    assert out.dtype == np.dtype("=i4")
    np.testing.assert_array_equal(out, arr)


PEAK_RSS = textwrap.dedent("""
    import sys
    from digitlab.data.idx import read_idx
    arr = read_idx(sys.argv[1])
    assert arr.shape == (int(sys.argv[2]),) and not arr.any()
    # VmHWM, not getrusage's ru_maxrss: that one survives exec, so a large parent (pytest) would leak into it
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) * 1024)  # KiB -> bytes
""")


def test_gzip_bomb_memory_is_bounded_by_the_declared_size(tmp_path):
    """A ~200 KB gzip file declaring 200 MiB: the payload is held once (it used to be twice)."""
    declared = 200 << 20
    path = tmp_path / "bomb.gz"
    gzip_bomb(path, declared)
    assert path.stat().st_size < 400_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), str(declared)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    peak = int(out.stdout.strip())
    # interpreter + NumPy + digitlab are ~60-100 MB; a second copy of the payload would add 200 MiB
    assert peak < declared + (150 << 20), f"peak RSS {peak / 2**20:.0f} MiB for a {declared >> 20} MiB payload"


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    assert error_without_blocking(lambda: read_idx(fifo), fifo, IdxFormatError) == f"{fifo}: is a FIFO (named pipe), not a regular file, expected an IDX file"


def test_character_device_is_refused():
    with pytest.raises(IdxFormatError) as err:
        read_idx("/dev/zero")
    assert str(err.value) == "/dev/zero: is a character device, not a regular file, expected an IDX file"


def test_unreadable_file_is_one_clear_error(tmp_path, monkeypatch):
    """Root reads any file, so the EACCES is injected where the file is opened."""
    import digitlab.data.idx as idx

    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))

    def denied(p):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(idx, "open_regular", denied)
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: cannot open: Permission denied"


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_read_fault_is_one_clear_error():
    """A real I/O error that root cannot bypass: /proc/self/mem opens as a regular file, reading offset 0 fails."""
    with pytest.raises(IdxFormatError) as err:
        read_idx("/proc/self/mem")
    assert str(err.value) == "/proc/self/mem: cannot read: Input/output error"


# ------------------------------------------------------------------------------------------------------ fuzz

VALID = idx_bytes(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))


def mutated():
    """Raw bytes: random, a valid file with bytes flipped/cut/appended, or a random header with any dims."""
    flips = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6)
    edited = st.builds(lambda fl, cut, tail: bytes(_apply(VALID, fl))[:cut] + tail,
                       flips, st.integers(0, len(VALID) + 1), st.binary(max_size=8))  # fmt: skip
    headers = st.builds(lambda code, dims, tail: bytes([0, 0, code, len(dims)]) + struct.pack(
        f">{len(dims)}I", *dims) + tail, st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
        st.lists(st.sampled_from([0, 1, 2, 3, 255, 2**16, 2**31, 2**32 - 1]), min_size=1, max_size=70),
        st.binary(max_size=64))  # fmt: skip
    return st.one_of(st.binary(max_size=64), edited, headers)


def _apply(data: bytes, flips):
    out = bytearray(data)
    for i, v in flips:
        out[i] = v
    return out


@settings(max_examples=150, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated(), compress=st.booleans())
def test_fuzz_only_clean_errors(tmp_path, data, compress):
    peak = peak_rss()
    path = tmp_path / "fuzz"
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        arr = read_idx(path, max_bytes=1 << 20)
    except IdxFormatError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        assert arr.nbytes <= 1 << 20
        assert arr.nbytes == len(data) - 4 - 4 * arr.ndim  # exactly the declared payload, nothing extra
    assert peak_rss() - peak < FUZZ_RSS_GROWTH
