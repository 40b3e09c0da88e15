"""Data sets under faults: a corrupt cache repaired from a mirror, FIFOs, unreadable folders, full or
read-only disks, and the temporary files of a killed fetch."""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from data_helpers import STEMS, FileServer, fake_arrays, files_under, gz, spec_for, write_files
from fault_helpers import error_without_blocking

from digitlab.cli import main
from digitlab.data.idx import idx_bytes
from digitlab.data.sources import REGISTRY, DatasetNotFoundError, fetch, resolve
from digitlab.errors import DataError

ARRAYS = fake_arrays()
BAD_NAME = "t10k-labels-idx1-ubyte.gz"
CORRUPT = gzip.compress(b"\x00\x00\x08\x03" + np.array([0, 2**32 - 1, 2**32 - 1], ">u4").tobytes())


def routes(prefix: str) -> dict:
    return {f"/{prefix}/{stem}.gz": gz(a) for stem, a in ARRAYS.items()}


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Registers data set "toy" (mirrors set per test) and gives its cache folder, filled and then corrupted."""
    cache = tmp_path / "home-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    folder = cache / "digitlab" / "toy"
    write_files(folder, ARRAYS)
    (folder / BAD_NAME).write_bytes(CORRUPT)

    def register(*mirrors):
        monkeypatch.setitem(REGISTRY, "toy", spec_for(ARRAYS, mirrors=mirrors))
        return folder

    return register


def test_corrupt_cached_file_is_repaired_from_a_working_mirror(capsys, toy):
    with FileServer({"/a/" + BAD_NAME: 503} | routes("b")) as srv:
        folder = toy(srv.url("a/"), srv.url("b/"))
        rc, out, err = run(capsys, "data", "verify", "toy")
        assert rc == 1 and "t10k-labels-idx1-ubyte.gz: FAILED: " in out and "implausible shape" in out
        assert "repair: `digitlab data fetch toy`" in out
        rc, out, err = run(capsys, "data", "fetch", "toy", "--json")
        assert rc == 0, err
        assert json.loads(out)["found_by"] == "download"
        assert srv.hits == ["/a/" + BAD_NAME, "/b/" + BAD_NAME]  # only the bad file is fetched again
    assert gzip.decompress((folder / BAD_NAME).read_bytes()) == idx_bytes(ARRAYS[STEMS["test_labels"]])
    rc, out, _ = run(capsys, "data", "verify", "toy")
    assert rc == 0 and out.strip().endswith("all checksums match")
    assert [p.name for p in files_under(folder.parent)] == sorted(f"{s}.gz" for s in STEMS.values())


def test_cached_file_with_a_wrong_checksum_is_repaired_from_a_working_mirror(capsys, toy):
    # well-formed IDX with one label changed: only its checksum tells it from the real file
    wrong = ARRAYS[STEMS["test_labels"]].copy()
    wrong[0] = (wrong[0] + 1) % 10
    with FileServer(routes("b")) as srv:
        folder = toy(srv.url("b/"))
        (folder / BAD_NAME).write_bytes(gz(wrong))
        rc, out, err = run(capsys, "data", "fetch", "toy", "--json")
        assert rc == 0, err
        assert json.loads(out)["found_by"] == "download" and srv.hits == ["/b/" + BAD_NAME]
    assert gzip.decompress((folder / BAD_NAME).read_bytes()) == idx_bytes(ARRAYS[STEMS["test_labels"]])


def test_corrupt_cache_and_no_working_mirror_is_one_clear_error(capsys, toy):
    with FileServer({}) as srv:  # every file 404
        folder = toy(srv.url("a/"))
        rc, out, err = run(capsys, "data", "fetch", "toy")
    assert rc == 1 and out == ""
    assert err.startswith("digitlab: error: toy: no verified copy found. Tried, in order:\n")
    assert f"  - cache {folder}: {folder / BAD_NAME}: implausible shape 0×4294967295×4294967295" in err
    assert f"  - download {srv.url('a/')}{BAD_NAME}: 404 " in err
    assert "Traceback" not in err
    assert (folder / BAD_NAME).read_bytes() == CORRUPT  # nothing worse than before


def test_info_falls_back_to_sample_and_names_the_corrupt_cache(capsys, monkeypatch, tmp_path):
    folder = tmp_path / "xdg" / "digitlab" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write_files(folder, ARRAYS)
    bad = folder / "train-images-idx3-ubyte.gz"  # read first
    bad.write_bytes(CORRUPT)
    rc, out, err = run(capsys, "data", "info")
    assert rc == 0 and out.startswith("mnist-sample: found in ")
    assert f"A local copy is unusable: {bad}: implausible shape" in err
    assert "Get or repair the full set with `digitlab data fetch mnist`" in err


def test_info_notice_does_not_call_a_folder_without_the_files_unusable(capsys, monkeypatch, tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "data" / "notes.txt").write_text("other data sets live here")
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "data"))
    rc, out, err = run(capsys, "data", "info")
    assert rc == 0 and "using the bundled mnist-sample" in err
    assert "unusable" not in err and "Get the full set with" in err


@pytest.mark.parametrize("action", ["info", "verify", "fetch"])
def test_fifo_in_a_data_folder_is_refused_without_hanging(tmp_path, action):
    """In a subprocess with a timeout: a hang fails the test instead of blocking the suite."""
    folder = tmp_path / "data"
    write_files(folder, ARRAYS)
    fifo = folder / "train-images-idx3-ubyte.gz"  # read first
    fifo.unlink()
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    argv = ["data", action, "mnist", "--data-dir", str(folder)]
    proc = subprocess.run([sys.executable, "-m", "digitlab", *argv], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    problem = f"{fifo}: is a FIFO (named pipe), not a regular file, expected an IDX file"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    if action == "verify":
        assert f"FAILED: {problem}" in proc.stdout
    else:
        assert proc.stderr == f"digitlab: error: {problem}\n"


def test_unreadable_data_folder_is_one_clear_error(tmp_path, monkeypatch):
    """Root ignores permission bits, so the EACCES that listing a mode-000 folder gives is injected."""
    import digitlab.data.sources as sources

    folder = tmp_path / "data"
    write_files(folder, ARRAYS)

    def denied(path):
        if str(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    real = os.path.lexists
    monkeypatch.setattr(sources.os.path, "lexists", denied)
    with pytest.raises(DataError) as err:
        resolve("toy", folder, registry={"toy": spec_for(ARRAYS)})
    assert str(err.value) == f"{folder}: cannot read the folder: Permission denied"


def _disk_fault(monkeypatch, code):
    import digitlab.data.sources as sources

    def fault(_dest):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sources, "temp_dir_for", fault)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_or_read_only_cache_on_download_is_one_clear_error(tmp_path, monkeypatch, code):
    _disk_fault(monkeypatch, code)
    with FileServer(routes("a") | routes("b")) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/"), srv.url("b/")])
        with pytest.raises(DatasetNotFoundError) as err:
            resolve("toy", registry={"toy": spec}, cache_root=tmp_path / "cache", system_dirs=(), env={},
                    progress=False, timeout=5)  # fmt: skip
        assert srv.hits == []  # not asked: the fault is local, no mirror could help
    tried = str(err.value).split("Download the files by hand")[0].splitlines()[1:]
    assert tried == [f"  - cache {tmp_path / 'cache' / 'toy'}: no such folder",
                     f"  - download {tmp_path / 'cache' / 'toy'}: cannot store the download: {os.strerror(code)}"]


def test_full_cache_still_falls_back_to_the_sample_and_says_why(tmp_path, monkeypatch, capsys):
    _disk_fault(monkeypatch, errno.ENOSPC)
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    rc, out, err = run(capsys, "data", "info", "--download")
    assert rc == 0 and out.startswith("mnist-sample: found in ")
    assert (f"A local copy is unusable: {cache / 'digitlab' / 'mnist'}: cannot store the download: "
            "No space left on device.") in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_cache_on_import_is_one_clear_error(tmp_path, monkeypatch, capsys, code):
    import shutil

    src = tmp_path / "src"
    write_files(src, ARRAYS)

    def fault(_fin, fout):
        fout.write(b"\0" * 10)
        raise OSError(code, os.strerror(code))

    cache = tmp_path / "home-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(shutil, "copyfileobj", fault)
    monkeypatch.setitem(REGISTRY, "toy", spec_for(ARRAYS))
    rc, out, err = run(capsys, "data", "fetch", "toy", "--data-dir", str(src))
    target = cache / "digitlab" / "toy" / "train-images-idx3-ubyte.gz"
    assert rc == 1 and out == ""
    assert err == f"digitlab: error: {target}: cannot write here: {os.strerror(code)}\n"
    assert files_under(cache) == []  # no partial file, no temporary left


def test_fetch_removes_the_download_folder_of_a_killed_fetch(tmp_path):
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    stale = cache / f".toy.{int(dead.stdout)}-abcdefgh.tmp"
    live = cache / f".toy.{os.getpid()}-abcdefgh.tmp"  # as if another thread of ours were downloading
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
    with FileServer(routes("a")) as srv:
        found = fetch("toy", registry={"toy": spec_for(ARRAYS, mirrors=[srv.url("a/")])}, cache_root=cache,
                      system_dirs=(), env={}, progress=False, timeout=5)  # fmt: skip
    assert found.how == "download"
    assert not stale.exists() and live.exists()


def test_fetch_import_of_a_fifo_source_fails_cleanly(tmp_path, monkeypatch):
    """check_location verified the folder; the file is then swapped for a FIFO before the copy."""
    import digitlab.data.sources as sources

    src = tmp_path / "src"
    write_files(src, ARRAYS)
    real = sources.check_location

    def swap(spec, directory):
        result = real(spec, directory)
        (src / BAD_NAME).unlink()
        os.mkfifo(src / BAD_NAME)
        return result

    monkeypatch.setattr(sources, "check_location", swap)
    error = error_without_blocking(
        lambda: fetch("toy", src, registry={"toy": spec_for(ARRAYS)}, cache_root=tmp_path / "cache"),
        src / BAD_NAME, DataError)
    assert error == (f"{src / BAD_NAME}: cannot copy into {tmp_path / 'cache' / 'toy'}: "
                           "is a FIFO (named pipe), not a regular file")



def test_fetch_with_a_complete_cache_still_removes_leftovers_of_killed_runs(tmp_path):
    cache = tmp_path / "cache"
    folder = cache / "toy"
    write_files(folder, ARRAYS)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    stale_dir = cache / f".toy.{dead}-abcdefgh.tmp"
    stale_dir.mkdir()
    stale_file = folder / f".train-labels-idx1-ubyte.gz.{dead}-abcdefgh.tmp"  # a killed `fetch --data-dir`
    stale_file.write_bytes(b"half")
    found = fetch("toy", registry={"toy": spec_for(ARRAYS)}, cache_root=cache, system_dirs=(), env={})
    assert found.how == "cache"
    assert not stale_dir.exists() and not stale_file.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in STEMS.values())
