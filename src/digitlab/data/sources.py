"""Where data sets come from: the registry, mirrors, content checksums, the cache and the resolution order.

    from digitlab.data.sources import resolve, fetch, verify
    found = resolve("mnist")                  # -> Resolved(spec, source, how, paths, arrays, checksums, notice)
    found = resolve("mnist", data_dir="~/mnist")      # only that folder (either file-name spelling, gz or raw)
    fetch("fashion-mnist")                    # make it available in the user cache (download or copy + verify)
    report = verify("mnist")                  # re-hash the local copy: list of per-file dicts with "ok"

Resolution order, first verified hit wins (`resolve`):
  1. `data_dir=` (the `--data-dir` flag) — when given, ONLY that folder; a problem there is an error;
  2. `$DIGITLAB_DATA_DIR` (read only here, at the top-level call) — `<dir>/<name>` then `<dir>` itself;
  3. the user cache `pooch.os_cache("digitlab")/<name>` (`~/.cache/digitlab/<name>` on Linux);
  4. system data dirs `/usr/share/datasets/<name>` (the Debian convention);
  5. a download into the cache, every file from the first mirror that gives the right content;
  6. for `mnist` only, the bundled `mnist-sample`, with a one-line notice saying so.
If nothing works, `DatasetNotFoundError` lists every place tried, why each failed, and the manual URLs.

Checksums are sha256 of the *uncompressed* IDX content, so re-compressed mirrors still verify. A download
goes to a temporary folder beside the cache, is parsed and hashed there, and only then moved into the cache
with `os.replace`: nothing partial or corrupt is ever left in the cache. Tests inject their own registry
(`registry={"toy": DatasetSpec(...)}`) with 127.0.0.1 mirrors, so they never need the network.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.data.idx import IdxFormatError, read_idx
from digitlab.errors import DataError
from digitlab.fsutil import atomic_write, clean_stale_temps, open_regular, temp_dir_for

__all__ = [
    "ROLES",
    "DatasetSpec",
    "Resolved",
    "DatasetNotFoundError",
    "ChecksumError",
    "REGISTRY",
    "SYSTEM_DIRS",
    "get_spec",
    "find_files",
    "check_location",
    "resolve",
    "fetch",
    "verify",
    "default_cache_root",
]

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
_MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DIGITS = tuple(str(d) for d in range(10))
_MNIST_LICENSE = "MNIST by Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0"


class ChecksumError(DataError):
    """A file's uncompressed content does not have the registered sha256."""


class DatasetNotFoundError(DataError):
    """No place in the resolution order had a verified copy of the data set."""

    def __init__(self, name: str, tried: list[str], manual: list[str]):
        self.name, self.tried, self.manual = name, list(tried), list(manual)
        lines = [f"{name}: no verified copy found. Tried, in order:"]
        lines += [f"  - {t}" for t in tried] or ["  - (nothing to try)"]
        if manual:
            lines.append("Download the files by hand from one of these and pass --data-dir DIR:")
            lines += [f"  {u}" for u in manual]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. `checksums` maps file stem -> sha256 of the uncompressed content (None: unchecked)."""

    name: str
    class_names: tuple[str, ...] = _DIGITS
    files: Mapping[str, str] = field(default_factory=lambda: dict(_MNIST_STEMS))  # role -> file stem
    checksums: Mapping[str, str] | None = None
    mirrors: tuple[str, ...] = ()  # base URLs; a file's URL is base + stem + ".gz"
    fallback: str | None = None  # data set used (with a notice) when nothing else works
    bundled: Path | None = None  # folder shipped inside the package
    license: str = ""

    def urls(self, stem: str) -> list[str]:
        return [base + stem + ".gz" for base in self.mirrors]


REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        # sha256 of the uncompressed files; values from ../shared/data/mnist/README.md
        checksums={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",  # last: has answered 403/404/503 and HTML error pages
        ),
        fallback="mnist-sample",
        license=_MNIST_LICENSE,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),  # fmt: skip
        # sha256 of the uncompressed files, computed from Debian's dataset-fashion-mnist
        # (0.0~git20200523.55506a9-1, /usr/share/datasets/fashion-mnist), the canonical copy.
        checksums={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        license="Fashion-MNIST by Zalando Research (H. Xiao, K. Rasul, R. Vollgraf); MIT license",
    ),
    "mnist-sample": DatasetSpec(
        name="mnist-sample",
        # sha256 of the uncompressed bundled files, printed by scripts/make_sample.py
        checksums={
            "train-images-idx3-ubyte": "88712fa5d9a5a05c26f61427d274f3f2671b8c79c90896c4ad643e75ef785145",
            "train-labels-idx1-ubyte": "e541a01ef9b8d0db8f742978ec89dbf4b842aaf35de7718d857dbedbbb892f4d",
            "t10k-images-idx3-ubyte": "63408bbfc68896e89c517fe82c7bb9051946e4cc6bd98f07840baa7de9d281d2",
            "t10k-labels-idx1-ubyte": "4e5668b27741aff9312a33e02818204cdf93cec56cb86b51bbafefb98f7558a5",
        },
        bundled=SAMPLE_DIR,
        license=_MNIST_LICENSE + " (stratified subset: 1,000 train + 200 test images per class)",
    ),
}


@dataclass(frozen=True)
class Resolved:
    """A verified copy of a data set: where it was found and its four arrays, keyed by role."""

    spec: DatasetSpec
    source: Path
    how: str  # "data_dir", "DIGITLAB_DATA_DIR", "cache", "system", "download", "bundled"
    paths: dict[str, Path]  # role -> file
    arrays: dict[str, np.ndarray]  # role -> array
    checksums: dict[str, str]  # file stem -> sha256 of uncompressed content
    notice: str | None = None
    tried: tuple[str, ...] = ()


def default_cache_root() -> Path:
    """The platform's user cache for digitlab (honours XDG_CACHE_HOME on Linux)."""
    import pooch

    return Path(pooch.os_cache("digitlab"))


def get_spec(name: str, registry: Mapping[str, DatasetSpec] | None = None) -> DatasetSpec:
    registry = REGISTRY if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r} (known: {', '.join(sorted(registry))})") from None


def spellings(stem: str) -> list[str]:
    """File names accepted for a stem: `train-images-idx3-ubyte` and `train-images.idx3-ubyte`, gz or raw."""
    dotted = stem.replace("-idx", ".idx", 1)
    names = [stem + ".gz", stem, dotted + ".gz", dotted]
    return list(dict.fromkeys(names))


def find_files(spec: DatasetSpec, directory) -> dict[str, Path]:
    """Map each role to the first existing spelling of its file in `directory`; DataError names the missing."""
    directory = Path(directory)
    try:
        if not directory.exists():
            raise DataError(f"{directory}: no such folder")
        if not directory.is_dir():
            raise DataError(f"{directory}: not a folder")
        found, missing = {}, []
        for role, stem in spec.files.items():
            # lexists: a FIFO, device or broken link under the name is found here and refused when read
            hit = next((directory / n for n in spellings(stem) if os.path.lexists(directory / n)), None)
            if hit is None:
                missing.append(stem + "[.gz]")
            else:
                found[role] = hit
    except OSError as exc:  # no permission to look inside, I/O error
        raise DataError(f"{directory}: cannot read the folder: {exc.strerror or exc}") from None
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)}")
    return found


def _check_structure(spec: DatasetSpec, paths: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(f"{ip}: expected uint8 images [N, rows, cols], found {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{lp}: expected uint8 labels [N], found {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(
                f"{ip}, {lp}: images/labels count mismatch: {len(images)} images but {len(labels)} labels"
            )
        if len(labels) and int(labels.max()) >= len(spec.class_names):
            raise DataError(
                f"{lp}: label {int(labels.max())} out of range for {len(spec.class_names)} classes"
            )


def check_location(spec: DatasetSpec, directory) -> tuple[dict[str, Path], dict[str, np.ndarray], dict[str, str]]:
    """Read and verify the four files in `directory`: (paths, arrays, checksums) or a DataError saying why not."""
    paths = find_files(spec, directory)
    arrays, sums = {}, {}
    for role, path in paths.items():
        stem = spec.files[role]
        arrays[role], sums[stem] = read_idx(path, sha256=True)
        expected = None if spec.checksums is None else spec.checksums.get(stem)
        if expected is not None and sums[stem] != expected:
            raise ChecksumError(
                f"{path}: checksum mismatch: sha256 of uncompressed content is {sums[stem]}, expected {expected}"
            )
    _check_structure(spec, paths, arrays)
    return paths, arrays, sums


def _locations(spec: DatasetSpec, env_dir, cache_root: Path, system_dirs) -> Iterator[tuple[str, Path]]:
    if env_dir:
        yield "DIGITLAB_DATA_DIR", Path(env_dir) / spec.name
        yield "DIGITLAB_DATA_DIR", Path(env_dir)
    yield "cache", cache_root / spec.name
    for d in system_dirs:
        yield "system", Path(d) / spec.name


def _resolved(spec, directory, how, tried=(), notice=None) -> Resolved:
    paths, arrays, sums = check_location(spec, directory)
    return Resolved(spec, Path(directory), how, paths, arrays, sums, notice, tuple(tried))


def _manual_urls(spec: DatasetSpec) -> list[str]:
    return [u for stem in spec.files.values() for u in spec.urls(stem)]


def resolve(
    name: str = "mnist",
    data_dir=None,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
    download: bool = True,
    fallback: bool = True,
    env: Mapping[str, str] | None = None,
    cache_root=None,
    system_dirs=SYSTEM_DIRS,
    progress: bool = True,
    timeout: float = 60.0,
) -> Resolved:
    """Find a verified copy of data set `name` following the resolution order in the module docstring."""
    spec = get_spec(name, registry)
    if data_dir is not None:  # explicit: only this folder
        return _resolved(spec, Path(data_dir).expanduser(), "data_dir")
    if spec.bundled is not None:
        return _resolved(spec, spec.bundled, "bundled")
    env = os.environ if env is None else env
    cache_root = default_cache_root() if cache_root is None else Path(cache_root)
    tried: list[str] = []
    unusable: list[str] = []  # places that exist but hold a bad copy: said in the fall-back notice
    for how, directory in _locations(spec, env.get("DIGITLAB_DATA_DIR"), cache_root, system_dirs):
        try:
            if not directory.is_dir():
                tried.append(f"{how} {directory}: no such folder")
                continue
            return _resolved(spec, directory, how, tried)
        except DataError as exc:
            tried.append(f"{how} {directory}: {exc}")
            if _has_all(spec, directory):  # a copy is there but bad (not merely a folder without the files)
                unusable.append(str(exc))
        except OSError as exc:
            tried.append(f"{how} {directory}: cannot read: {exc.strerror or exc}")
            unusable.append(tried[-1])
    if download and spec.mirrors:
        try:
            failures = download_into(spec, cache_root / spec.name, progress=progress, timeout=timeout)
        except DataError as exc:  # the cache cannot take the files (full, read-only, no permission)
            failures = [str(exc)]
            unusable.append(str(exc))
        if not failures:
            return _resolved(spec, cache_root / spec.name, "download", tried)
        tried += [f"download {f}" for f in failures]
    elif spec.mirrors:
        tried.append("download: not attempted (downloads off)")
    if fallback and spec.fallback:
        found = resolve(spec.fallback, registry=registry, download=False, fallback=False, env=env,
                        cache_root=cache_root, system_dirs=system_dirs)  # fmt: skip
        n_train, n_test = len(found.arrays["train_labels"]), len(found.arrays["test_labels"])
        bad = f" A local copy is unusable: {unusable[0]}." if unusable else ""
        notice = (
            f"digitlab: note: full {name} not found ({len(tried)} places tried); using the bundled "
            f"{found.spec.name} ({n_train} train / {n_test} test images).{bad} "
            f"Get {'or repair ' if unusable else ''}the full set with `digitlab data fetch {name}` "
            f"or pass --data-dir DIR."
        )
        return Resolved(found.spec, found.source, found.how, found.paths, found.arrays, found.checksums,
                        notice, tuple(tried))  # fmt: skip
    raise DatasetNotFoundError(name, tried, _manual_urls(spec))


def _download_one(spec: DatasetSpec, stem: str, url: str, dest_dir: Path, progress: bool, timeout: float) -> None:
    """Download url to a temp folder beside dest_dir, verify its content, then move it into dest_dir."""
    import pooch

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = temp_dir_for(dest_dir)
    try:
        tmp = tmpdir / (stem + ".gz")
        pooch.HTTPDownloader(progressbar=progress, timeout=timeout)(url, str(tmp), None)
        _, digest = read_idx(tmp, sha256=True)
        expected = None if spec.checksums is None else spec.checksums.get(stem)
        if expected is not None and digest != expected:
            raise ChecksumError(f"checksum mismatch: sha256 of uncompressed content is {digest}, expected {expected}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        for other in spellings(stem):  # a stale copy under another spelling would shadow the good one
            (dest_dir / other).unlink(missing_ok=True)
        os.replace(tmp, dest_dir / (stem + ".gz"))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


_SHORT_REASONS = (
    (r"Failed to resolve '([^']+)'", "cannot resolve host {}"),
    (r"Connection refused", "connection refused"),
    (r"timed out|Timeout", "timed out"),
)


def _describe(exc: BaseException) -> str:
    """One short line for a download failure (requests' connection errors are paragraphs)."""
    if isinstance(exc, IdxFormatError):
        return exc.problem
    text = str(exc) or type(exc).__name__
    if _unreachable(exc):
        for pattern, short in _SHORT_REASONS:
            m = re.search(pattern, text)
            if m:
                return short.format(*m.groups())
    return text.splitlines()[0][:300]


def _local_fault(exc: BaseException) -> bool:
    """A fault of this machine's disk (full, read-only, no permission), not of the mirror."""
    import requests

    return isinstance(exc, OSError) and not isinstance(exc, requests.RequestException) and exc.errno is not None


def _unreachable(exc: BaseException) -> bool:
    """The mirror itself cannot be reached (DNS, refused, timeout): no point asking it for the other files."""
    import requests

    return isinstance(exc, (requests.ConnectionError, requests.Timeout)) and not isinstance(
        exc, requests.exceptions.ChunkedEncodingError
    )


def download_into(spec: DatasetSpec, dest_dir, *, progress: bool = True, timeout: float = 60.0) -> list[str]:
    """Download every file of `spec` that `dest_dir` lacks in verified form, each from the first mirror that works.

    Moves on to the next mirror on ANY failure (HTTP error, dropped connection, HTML page, corrupt or wrong
    content). Returns the list of failures for files no mirror could provide (empty list: complete).
    A fault of the local disk (full, read-only, no permission) raises DataError at once: no mirror can help.
    """
    dest_dir = Path(dest_dir)
    problems: list[str] = []
    dead: set[str] = set()  # mirrors found unreachable: reported once, not asked again
    clean_stale_temps(dest_dir)  # download folders of a killed fetch
    for stem in spec.files.values():
        if _have_verified(spec, stem, dest_dir):
            continue
        errors = []
        for base, url in zip(spec.mirrors, spec.urls(stem)):
            if base in dead:
                continue
            try:
                _download_one(spec, stem, url, dest_dir, progress, timeout)
                break
            except Exception as exc:  # noqa: BLE001 - any failure means: try the next mirror
                if _local_fault(exc):  # every mirror would fail the same way
                    raise DataError(f"{dest_dir}: cannot store the download: {exc.strerror}") from None
                if _unreachable(exc):
                    dead.add(base)
                    errors.append(f"{base}: {_describe(exc)} (mirror skipped for the other files)")
                else:
                    errors.append(f"{url}: {_describe(exc)}")
        else:
            problems += errors or [f"{stem}: no reachable mirror left"]
    return problems


def _have_verified(spec: DatasetSpec, stem: str, directory: Path) -> bool:
    expected = None if spec.checksums is None else spec.checksums.get(stem)
    for n in spellings(stem):
        p = directory / n
        if p.is_file():
            try:
                _, digest = read_idx(p, sha256=True)
            except DataError:
                return False
            return expected is None or digest == expected
    return False


def fetch(
    name: str,
    source_dir=None,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
    env: Mapping[str, str] | None = None,
    cache_root=None,
    system_dirs=SYSTEM_DIRS,
    progress: bool = True,
    timeout: float = 60.0,
) -> Resolved:
    """Make `name` available locally. With `source_dir`: verify the files there and copy them into the cache."""
    spec = get_spec(name, registry)
    cache_root = default_cache_root() if cache_root is None else Path(cache_root)
    dest = cache_root / spec.name
    for leftover in [dest, *(dest / n for stem in spec.files.values() for n in spellings(stem))]:
        clean_stale_temps(leftover)  # of a fetch or copy killed earlier
    if source_dir is None:
        return resolve(name, registry=registry, fallback=False, env=env, cache_root=cache_root,
                       system_dirs=system_dirs, progress=progress, timeout=timeout)  # fmt: skip
    paths, _, _ = check_location(spec, Path(source_dir).expanduser())
    for role, src in paths.items():
        stem = spec.files[role]
        target = dest / (stem + (".gz" if src.name.endswith(".gz") else ""))
        try:
            with open_regular(src) as fin, atomic_write(target) as fout:
                shutil.copyfileobj(fin, fout)
            for other in spellings(stem):  # a stale copy under another spelling would shadow the new one
                if other != target.name:
                    (dest / other).unlink(missing_ok=True)
        except OSError as exc:  # the source vanished or became unreadable after it was verified
            raise DataError(f"{src}: cannot copy into {dest}: {exc.strerror or exc}") from None
    return _resolved(spec, dest, "cache")


def verify(
    name: str | None = None,
    data_dir=None,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
    env: Mapping[str, str] | None = None,
    cache_root=None,
    system_dirs=SYSTEM_DIRS,
) -> dict:
    """Re-hash a local copy. Returns {"name", "source", "ok", "files": [{file, path, sha256, expected, ok, problem}]}.

    `data_dir` alone: the files there are matched against every registry entry. `name` alone: the first
    location (same order as `resolve`, no download) that has all the files.
    """
    registry = REGISTRY if registry is None else registry
    if name is None and data_dir is None:
        raise DataError("verify: give a data set name or --data-dir DIR")
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        specs = [get_spec(name, registry)] if name else list(registry.values())
    else:
        spec = get_spec(name, registry)
        env = os.environ if env is None else env
        cache_root = default_cache_root() if cache_root is None else Path(cache_root)
        places = [spec.bundled] if spec.bundled else [d for _, d in _locations(
            spec, env.get("DIGITLAB_DATA_DIR"), cache_root, system_dirs)]  # fmt: skip
        directory = next((d for d in places if _has_all(spec, d)), None)
        if directory is None:
            raise DataError(f"{name}: no local copy to verify (looked in {', '.join(map(str, places))}); "
                            f"run `digitlab data fetch {name}`")  # fmt: skip
        specs = [spec]
    memo: dict[Path, tuple[str | None, str | None]] = {}  # each file is hashed once, whatever the specs
    reports = [_verify_dir(spec, directory, memo) for spec in specs if _has_all(spec, directory)]
    if not reports:
        find_files(specs[0], directory)  # raises with the missing files
    best = next((r for r in reports if r["ok"]), reports[0])
    if name is None and not best["ok"]:
        best["name"] = None  # content matches no registered data set
    return best


def _has_all(spec: DatasetSpec, directory) -> bool:
    try:
        find_files(spec, directory)
        return True
    except DataError:
        return False


def _hash_file(path: Path) -> tuple[str | None, str | None]:
    try:
        return read_idx(path, sha256=True)[1], None
    except DataError as exc:
        return None, str(exc)


def _verify_dir(spec: DatasetSpec, directory: Path, memo: dict) -> dict:
    files = []
    for role, path in find_files(spec, directory).items():
        stem = spec.files[role]
        expected = None if spec.checksums is None else spec.checksums.get(stem)
        if path not in memo:
            memo[path] = _hash_file(path)
        digest, problem = memo[path]
        entry = {"file": stem, "path": str(path), "sha256": digest, "expected": expected, "ok": False,
                 "problem": problem}  # fmt: skip
        if digest is not None:
            entry["ok"] = expected is None or entry["sha256"] == expected
            if not entry["ok"]:
                entry["problem"] = "checksum mismatch"
        files.append(entry)
    return {"name": spec.name, "source": str(directory), "ok": all(f["ok"] for f in files), "files": files}
