"""IDX reader/writer: round-trips of every type and rank, an independent reader, and every corrupt input."""

from __future__ import annotations

import gzip
import hashlib

import hypothesis.extra.numpy as hnp
import numpy as np
import idx2numpy  # independent reader, a dev extra: the cross-check always runs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitlab.data.idx import IdxFormatError, idx_bytes, read_idx, write_idx
from digitlab.errors import DataError


DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
)


@settings(max_examples=60, deadline=None)
@given(arr=arrays, compress=st.booleans())
def test_round_trip_every_type_and_rank(tmp_path_factory, arr, compress):
    path = tmp_path_factory.mktemp("rt") / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    out, digest = read_idx(path, sha256=True)
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()  # bit-exact, NaNs included
    assert digest == hashlib.sha256(idx_bytes(arr)).hexdigest()


@settings(max_examples=40, deadline=None)
@given(arr=arrays)
def test_writer_agrees_with_idx2numpy(arr):
    theirs = idx2numpy.convert_from_string(idx_bytes(arr))
    assert theirs.shape == arr.shape
    assert theirs.astype(arr.dtype).tobytes() == arr.tobytes()


def test_reader_agrees_with_idx2numpy_on_real_mnist(tmp_path, mnist_dir):
    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()))
    ours_gz = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    ours_raw = read_idx(raw)
    theirs = idx2numpy.convert_from_file(str(raw))
    assert ours_gz.shape == (10000, 28, 28) and ours_gz.dtype == np.uint8
    np.testing.assert_array_equal(ours_gz, theirs)
    np.testing.assert_array_equal(ours_raw, theirs)


def test_compression_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "looks-raw", arr, compress=True)
    raw_named_gz = write_idx(tmp_path / "looks.gz", arr, compress=False)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_big_endian_on_disk(tmp_path):
    path = write_idx(tmp_path / "s.idx", np.array([1, 258], dtype=np.int16))
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_arrays_are_writable(tmp_path):
    arr = read_idx(write_idx(tmp_path / "a.gz", np.zeros((2, 2), np.uint8)))
    arr[0, 0] = 7  # callers may modify what they loaded
    assert arr[0, 0] == 7


def test_writer_rejects_unsupported(tmp_path):
    with pytest.raises(DataError, match="cannot store dtype uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(DataError, match="1 to 255 dimensions, array has 0"):
        write_idx(tmp_path / "x", np.array(3, np.uint8))
    assert list(tmp_path.iterdir()) == []  # nothing partial written


# ----------------------------------------------------------------------------------------- corrupt inputs


def images_bytes(n=10) -> bytes:
    return idx_bytes(np.full((n, 28, 28), 7, dtype=np.uint8))


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated(tmp_path, compressed):
    data = images_bytes()[:-1000]
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if compressed else ""))
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: truncated: header says 10×28×28 = 7840 bytes, found 6840"
    assert isinstance(err.value, DataError)


def test_truncated_multibyte_type(tmp_path):
    path = tmp_path / "f.idx"
    path.write_bytes(idx_bytes(np.zeros((3, 4), np.float32))[:-4])
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: truncated: header says 3×4 × 4-byte elements = 48 bytes, found 44"


def test_trailing_bytes(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(images_bytes() + b"\0" * 5))
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: trailing bytes: header says 10×28×28 = 7840 bytes, found 7845 (5 extra)"


def test_bad_magic(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + images_bytes()[4:])
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: bad magic 0x12340803 (305399811): not an IDX file (IDX data starts with two zero bytes, "
        "a type code and the number of dimensions)"
    )


def test_wrong_type_code(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x07\x03" + images_bytes()[4:])
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: unknown IDX type code 0x07 (expected one of 0x08 ubyte, 0x09 byte, 0x0B short, "
        "0x0C int, 0x0D float, 0x0E double)"
    )


def test_zero_dimensions_and_short_header(tmp_path):
    zero = tmp_path / "zero"
    zero.write_bytes(b"\x00\x00\x08\x00")
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x0a")
    with pytest.raises(IdxFormatError, match=r"zero: header declares 0 dimensions$"):
        read_idx(zero)
    with pytest.raises(IdxFormatError) as err:
        read_idx(short)
    assert str(err.value) == f"{short}: truncated header: 3 dimensions need 16 header bytes, found 8"


def test_broken_gzip_stream(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    good = gzip.compress(idx_bytes(noise))  # incompressible: half the file cannot be mistaken for a short one
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(IdxFormatError) as err:
        read_idx(cut)
    assert str(err.value) == (
        f"{cut}: broken gzip stream (Compressed file ended before the end-of-stream marker was reached)"
    )
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IdxFormatError, match=r"bad\.gz: broken gzip stream \("):
        read_idx(bad)


def test_empty_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: empty file (0 bytes of IDX data)"
    gz_empty = tmp_path / "train-labels-idx1-ubyte.gz"
    gz_empty.write_bytes(gzip.compress(b""))
    with pytest.raises(IdxFormatError, match="empty file"):
        read_idx(gz_empty)


def test_directory_where_a_file_should_be(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.mkdir()
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: is a directory, expected an IDX file"


def test_missing_file(tmp_path):
    with pytest.raises(IdxFormatError) as err:
        read_idx(tmp_path / "nope.gz")
    assert str(err.value) == f"{tmp_path / 'nope.gz'}: no such file"


@pytest.mark.parametrize("compressed", [False, True])
def test_html_page_saved_under_the_name(tmp_path, compressed):
    page = b"\n<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body>x</body></html>"
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(page) if compressed else page)
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: is an HTML page, not IDX data (a web server's error page saved under this name?)"
    )


def test_write_is_atomic_and_deterministic(tmp_path):
    arr = np.arange(100, dtype=np.uint8).reshape(10, 10)
    a = write_idx(tmp_path / "a.gz", arr).read_bytes()
    b = write_idx(tmp_path / "b.gz", arr).read_bytes()
    assert a == b  # gzip mtime 0: same bytes for the same array
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz", "b.gz"]  # no temp files left


@pytest.mark.parametrize("compressed", [False, True])
def test_absurd_header_is_refused_before_allocating(tmp_path, compressed):
    data = b"\x00\x00\x08\x03" + np.array([4_000_000_000, 60000, 60000], ">u4").tobytes() + b"\0" * 100
    path = tmp_path / ("huge.gz" if compressed else "huge")
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(IdxFormatError) as err:
        read_idx(path)  # would be a 14 EB allocation
    claimed = "header says 4000000000×60000×60000 = 14400000000000000000 bytes"
    if compressed:
        size = path.stat().st_size
        assert str(err.value) == f"{path}: truncated: {claimed}, more than a {size}-byte gzip file can hold"
    else:
        assert str(err.value) == f"{path}: truncated: {claimed}, found 100"
