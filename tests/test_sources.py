"""Registry, resolution order, downloads through a real local HTTP server, fetch and verify."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from data_helpers import STEMS, Drop, FileServer, fake_arrays, files_under, gz, sha, spec_for, write_files

from digitlab.data.dataset import load_dataset
from digitlab.data.idx import idx_bytes
from digitlab.data.sources import (
    REGISTRY,
    ChecksumError,
    DatasetNotFoundError,
    fetch,
    resolve,
    verify,
)
from digitlab.errors import DataError

ARRAYS = fake_arrays()


def routes(prefix: str, arrays=ARRAYS) -> dict:
    return {f"/{prefix}/{stem}.gz": gz(a) for stem, a in arrays.items()}


def isolated(tmp_path, **kw):
    """resolve() kwargs that touch nothing outside tmp_path."""
    return {"cache_root": tmp_path / "cache", "system_dirs": (), "env": {}, "progress": False, "timeout": 5} | kw


def assert_arrays(found, arrays=ARRAYS):
    for role, stem in STEMS.items():
        np.testing.assert_array_equal(found.arrays[role], arrays[stem])


# -------------------------------------------------------------------------------------------------- downloads


def test_first_mirror_404_uses_second(tmp_path):
    with FileServer(routes("b")) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/"), srv.url("b/")])
        found = resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
        assert found.how == "download"
        assert srv.hits[:2] == ["/a/train-images-idx3-ubyte.gz", "/b/train-images-idx3-ubyte.gz"]
    assert_arrays(found)
    assert found.source == tmp_path / "cache" / "toy"
    assert sorted(p.name for p in files_under(tmp_path / "cache")) == sorted(f"{s}.gz" for s in STEMS.values())


@pytest.mark.parametrize(
    "bad",
    [
        gz(np.zeros((40, 28, 28), np.uint8)),  # valid IDX, wrong content: checksum mismatch
        b"\x1f\x8b\x08\x00garbage",  # not a gzip stream at all
        b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>",  # 200 + HTML
    ],
    ids=["wrong-content", "corrupt-gzip", "html-page"],
)
def test_corrupt_first_mirror_is_rejected_and_next_used(tmp_path, bad):
    r = routes("b") | {"/a/train-images-idx3-ubyte.gz": bad}
    with FileServer(r) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/"), srv.url("b/")])
        found = resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
        assert srv.hits[:2] == ["/a/train-images-idx3-ubyte.gz", "/b/train-images-idx3-ubyte.gz"]
    assert_arrays(found)
    cached = tmp_path / "cache" / "toy" / "train-images-idx3-ubyte.gz"
    assert gzip.decompress(cached.read_bytes()) == idx_bytes(ARRAYS[STEMS["train_images"]])


def test_corrupt_download_leaves_nothing_in_cache(tmp_path):
    bad = {f"/a/{stem}.gz": gz(np.zeros_like(a)) for stem, a in ARRAYS.items()}
    with FileServer(bad) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/")])
        with pytest.raises(DatasetNotFoundError) as err:
            resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
    assert "checksum mismatch: sha256 of uncompressed content is" in str(err.value)
    assert files_under(tmp_path / "cache") == []  # not even temp files


def test_connection_dropped_mid_file_leaves_no_partial_file(tmp_path):
    data = gz(ARRAYS[STEMS["train_images"]])
    r = {"/a/train-images-idx3-ubyte.gz": Drop(data, keep=len(data) // 2)}
    with FileServer(r) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/")])
        with pytest.raises(DatasetNotFoundError) as err:
            resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
    assert f"{srv.url('a/')}train-images-idx3-ubyte.gz: ('Connection broken: IncompleteRead" in str(err.value)
    assert files_under(tmp_path / "cache") == []


def test_connection_dropped_then_next_mirror(tmp_path):
    data = gz(ARRAYS[STEMS["train_images"]])
    r = routes("b") | {"/a/train-images-idx3-ubyte.gz": Drop(data, keep=100)}
    with FileServer(r) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/"), srv.url("b/")])
        found = resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
    assert_arrays(found)
    assert len(files_under(tmp_path / "cache")) == 4


def test_all_fail_lists_every_place_and_manual_urls(tmp_path):
    env_dir = tmp_path / "env"
    (env_dir / "toy").mkdir(parents=True)
    system = tmp_path / "sys"
    (system / "toy").mkdir(parents=True)
    write_files(system / "toy", fake_arrays(seed=1))  # present but wrong content
    with FileServer({"/b/train-images-idx3-ubyte.gz": 503}) as srv:
        mirrors = [srv.url("a/"), srv.url("b/")]
        spec = spec_for(ARRAYS, mirrors=mirrors)
        kw = isolated(tmp_path, env={"DIGITLAB_DATA_DIR": str(env_dir)}, system_dirs=(system,))
        with pytest.raises(DatasetNotFoundError) as err:
            resolve("toy", registry={"toy": spec}, **kw)
    msg = str(err.value)
    assert msg.startswith("toy: no verified copy found. Tried, in order:\n")
    assert f"DIGITLAB_DATA_DIR {env_dir / 'toy'}: {env_dir / 'toy'}: missing train-images-idx3-ubyte[.gz]" in msg
    assert f"cache {tmp_path / 'cache' / 'toy'}: no such folder" in msg
    assert f"system {system / 'toy'}: {system / 'toy' / 'train-images-idx3-ubyte.gz'}: checksum mismatch" in msg
    assert f"download {mirrors[0]}train-images-idx3-ubyte.gz: 404 Client Error" in msg
    assert f"download {mirrors[1]}train-images-idx3-ubyte.gz: 503 Server Error" in msg
    assert "Download the files by hand from one of these and pass --data-dir DIR:" in msg
    for stem in STEMS.values():
        for m in mirrors:
            assert f"  {m}{stem}.gz" in msg
    assert files_under(tmp_path / "cache") == []


def test_partial_cache_downloads_only_what_is_missing(tmp_path):
    cache = tmp_path / "cache" / "toy"
    write_files(cache, {k: v for k, v in ARRAYS.items() if "labels" in k})
    with FileServer(routes("a")) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/")])
        found = resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
        assert sorted(srv.hits) == ["/a/t10k-images-idx3-ubyte.gz", "/a/train-images-idx3-ubyte.gz"]
    assert found.how == "download"
    assert_arrays(found)


# ------------------------------------------------------------------------------------------ resolution order


def test_order_env_then_cache_then_system(tmp_path):
    env_arrays, cache_arrays, sys_arrays = (fake_arrays(seed=s) for s in (1, 2, 3))
    env_dir, system = tmp_path / "env", tmp_path / "sys"
    write_files(env_dir / "toy", env_arrays)
    write_files(tmp_path / "cache" / "toy", cache_arrays)
    write_files(system / "toy", sys_arrays)
    kw = isolated(tmp_path, env={"DIGITLAB_DATA_DIR": str(env_dir)}, system_dirs=(system,), download=False)

    def registry(arrays):
        return {"toy": spec_for(arrays, checksums=True)}

    assert resolve("toy", registry=registry(env_arrays), **kw).how == "DIGITLAB_DATA_DIR"
    # the env copy fails verification for the cache's checksums -> the cache wins
    found = resolve("toy", registry=registry(cache_arrays), **kw)
    assert found.how == "cache"
    assert any("DIGITLAB_DATA_DIR" in t and "checksum mismatch" in t for t in found.tried)
    found = resolve("toy", registry=registry(sys_arrays), **kw)
    assert (found.how, found.source) == ("system", system / "toy")
    assert_arrays(found, sys_arrays)


def test_env_dir_may_hold_the_files_directly(tmp_path):
    write_files(tmp_path / "flat", ARRAYS)
    kw = isolated(tmp_path, env={"DIGITLAB_DATA_DIR": str(tmp_path / "flat")}, download=False)
    found = resolve("toy", registry={"toy": spec_for(ARRAYS)}, **kw)
    assert (found.how, found.source) == ("DIGITLAB_DATA_DIR", tmp_path / "flat")


def test_env_var_read_from_the_process_environment(tmp_path, monkeypatch):
    write_files(tmp_path / "d" / "toy", ARRAYS)
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "d"))
    found = resolve("toy", registry={"toy": spec_for(ARRAYS)}, system_dirs=(), download=False)
    assert found.how == "DIGITLAB_DATA_DIR"


def test_data_dir_is_strict(tmp_path):
    write_files(tmp_path / "cache" / "toy", ARRAYS)  # a good cache must not hide a bad --data-dir
    bad = tmp_path / "mine"
    write_files(bad, fake_arrays(seed=5))
    with pytest.raises(ChecksumError, match="mine/train-images-idx3-ubyte.gz: checksum mismatch"):
        resolve("toy", bad, registry={"toy": spec_for(ARRAYS)}, **isolated(tmp_path))


def test_data_dir_with_dotted_raw_names(tmp_path):
    write_files(tmp_path / "raw", ARRAYS, gz=False, dotted=True)
    assert (tmp_path / "raw" / "train-images.idx3-ubyte").is_file()
    found = resolve("toy", tmp_path / "raw", registry={"toy": spec_for(ARRAYS)}, **isolated(tmp_path))
    assert found.how == "data_dir"
    assert found.paths["train_images"].name == "train-images.idx3-ubyte"
    assert_arrays(found)


def test_images_labels_count_mismatch(tmp_path):
    arrays = dict(ARRAYS)
    arrays[STEMS["train_labels"]] = ARRAYS[STEMS["train_labels"]][:-1]
    write_files(tmp_path / "d", arrays)
    with pytest.raises(DataError) as err:
        resolve("toy", tmp_path / "d", registry={"toy": spec_for(arrays)}, **isolated(tmp_path))
    d = tmp_path / "d"
    assert str(err.value) == (
        f"{d / 'train-images-idx3-ubyte.gz'}, {d / 'train-labels-idx1-ubyte.gz'}: "
        "images/labels count mismatch: 40 images but 39 labels"
    )


def test_label_out_of_range(tmp_path):
    arrays = dict(ARRAYS)
    arrays[STEMS["test_labels"]] = np.full(20, 10, np.uint8)
    write_files(tmp_path / "d", arrays)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 out of range for 10 classes"):
        resolve("toy", tmp_path / "d", registry={"toy": spec_for(arrays)}, **isolated(tmp_path))


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set 'nmist' \\(known: fashion-mnist, mnist, mnist-sample\\)"):
        resolve("nmist")


def test_offline_fallback_to_sample_prints_notice(tmp_path, capsys):
    registry = dict(REGISTRY)
    registry["mnist"] = spec_for(ARRAYS, name="mnist", mirrors=["http://127.0.0.1:9/"], fallback="mnist-sample")
    ds = load_dataset("mnist", registry=registry, **isolated(tmp_path))
    assert ds.name == "mnist-sample" and ds.how == "bundled"
    assert len(ds.train.labels) == 10000 and len(ds.test.labels) == 2000
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err == ds.notice + "\n"
    assert "full mnist not found" in err and "using the bundled mnist-sample" in err
    assert "digitlab data fetch mnist" in err
    assert files_under(tmp_path / "cache") == []


def test_real_registry_falls_back_without_download(tmp_path, capsys):
    ds = load_dataset("mnist", download=False, system_dirs=(), quiet=True)
    assert ds.name == "mnist-sample" and ds.notice and capsys.readouterr().err == ""
    assert all(np.bincount(ds.train.labels) == 1000) and all(np.bincount(ds.test.labels) == 200)


def test_fashion_mnist_from_debian_package(tmp_path):
    spec = REGISTRY["fashion-mnist"]
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    found = resolve("fashion-mnist", cache_root=tmp_path, env={}, download=False)
    assert found.how == "system"
    assert found.checksums == dict(spec.checksums)
    assert len(found.arrays["train_labels"]) == 60000 and found.spec.class_names[9] == "Ankle boot"


# ------------------------------------------------------------------------------------------- fetch and verify


def test_fetch_from_data_dir_copies_into_cache(tmp_path):
    src = tmp_path / "src"
    write_files(src, ARRAYS, gz=False, dotted=True)
    registry = {"toy": spec_for(ARRAYS)}
    found = fetch("toy", src, registry=registry, cache_root=tmp_path / "cache", system_dirs=(), env={})
    assert (found.how, found.source) == ("cache", tmp_path / "cache" / "toy")
    assert sorted(p.name for p in files_under(tmp_path / "cache")) == sorted(STEMS.values())
    again = resolve("toy", registry=registry, **isolated(tmp_path, download=False))
    assert again.how == "cache"
    assert_arrays(again)


def test_fetch_rejects_corrupt_source_and_copies_nothing(tmp_path):
    write_files(tmp_path / "src", fake_arrays(seed=9))
    with pytest.raises(ChecksumError):
        fetch("toy", tmp_path / "src", registry={"toy": spec_for(ARRAYS)}, cache_root=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


def test_fetch_downloads(tmp_path):
    with FileServer(routes("a")) as srv:
        spec = spec_for(ARRAYS, mirrors=[srv.url("a/")])
        found = fetch("toy", registry={"toy": spec}, cache_root=tmp_path / "cache", system_dirs=(), env={},
                      progress=False)  # fmt: skip
    assert found.how == "download"
    assert len(files_under(tmp_path / "cache")) == 4


def test_verify_reports_each_file(tmp_path):
    d = tmp_path / "d"
    paths = write_files(d, ARRAYS)
    registry = {"toy": spec_for(ARRAYS), "other": spec_for(fake_arrays(seed=4), name="other")}
    report = verify(data_dir=d, registry=registry)
    assert report["name"] == "toy" and report["ok"]
    assert [f["sha256"] for f in report["files"]] == [sha(ARRAYS[s]) for s in STEMS.values()]
    paths[STEMS["test_labels"]].write_bytes(gz(np.zeros(20, np.uint8)))
    report = verify("toy", d, registry=registry)
    assert not report["ok"]
    bad = [f for f in report["files"] if not f["ok"]]
    assert [(f["file"], f["problem"]) for f in bad] == [("t10k-labels-idx1-ubyte", "checksum mismatch")]
    assert verify(data_dir=d, registry=registry)["name"] is None  # matches no registered data set


def test_verify_names_a_missing_local_copy(tmp_path):
    with pytest.raises(DataError, match="toy: no local copy to verify .* run `digitlab data fetch toy`"):
        verify("toy", registry={"toy": spec_for(ARRAYS)}, cache_root=tmp_path, system_dirs=(), env={})


def test_real_mnist_checksums(mnist_dir):
    report = verify(data_dir=mnist_dir)
    assert report["name"] == "mnist" and report["ok"]
    readme = (mnist_dir / "README.md").read_text()
    for f in report["files"]:
        assert f["sha256"] in readme  # the values published beside the data


def test_unreachable_mirror_is_reported_once_and_skipped(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with FileServer(routes("b")) as srv:
        spec = spec_for(ARRAYS, mirrors=[closed, srv.url("b/")])
        found = resolve("toy", registry={"toy": spec}, **isolated(tmp_path))
        assert len(srv.hits) == 4  # every file from the second mirror, each asked once
    assert_arrays(found)
    spec = spec_for(ARRAYS, mirrors=[closed])
    with pytest.raises(DatasetNotFoundError) as err:
        resolve("toy", registry={"toy": spec}, **isolated(tmp_path / "other"))
    msg = str(err.value)
    assert msg.count("connection refused") == 1
    assert f"download {closed}: connection refused (mirror skipped for the other files)" in msg
    assert "download t10k-labels-idx1-ubyte: no reachable mirror left" in msg
