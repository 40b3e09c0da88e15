"""`digitlab data ...`: look at, fetch and verify data sets.

    digitlab data info [NAME] [--data-dir DIR] [--download]     where it was found, counts, checksum status
    digitlab data fetch NAME [--data-dir DIR]                    download (or copy + verify DIR) into the cache
    digitlab data verify [NAME] [--data-dir DIR]                 re-hash a local copy; exit 1 on mismatch
    digitlab data show NAME [--split test] [--index I ...| --grid N] --out FILE.png

Every command takes `--json` for a machine-readable result.
"""

from __future__ import annotations

from pathlib import Path

from digitlab.commands._common import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect, fetch and verify data sets (MNIST, Fashion-MNIST)",
                                   description=__doc__.splitlines()[0])  # fmt: skip
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("info", help="where a data set is found, counts per split and class, checksum status")
    p.add_argument("name", nargs="?", type=str, default="mnist", help="data set name (default: mnist)")
    _data_dir(p)
    p.add_argument("--download", action="store_true", default=False,
                   help="allow downloading when no local copy exists (default: off; falls back to the sample)")  # fmt: skip
    add_json_flag(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch", help="make a data set available locally (download, or copy + verify --data-dir)")
    p.add_argument("name", type=str, help="data set name: mnist, fashion-mnist")
    _data_dir(p, "import the files from DIR (verified, then copied into the user cache) instead of downloading")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a silent mirror is skipped (60)")
    add_json_flag(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("verify", help="re-check the content checksums of a local copy; exit 1 on mismatch")
    p.add_argument("name", nargs="?", type=str, default=None,
                   help="data set name (default: with --data-dir, whichever registered data set matches)")  # fmt: skip
    _data_dir(p, "verify the files in DIR")
    add_json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("show", help="write a PNG grid of images with their labels")
    p.add_argument("name", nargs="?", type=str, default="mnist", help="data set name (default: mnist)")
    p.add_argument("--split", type=str, default="test", choices=("train", "test", "all"),
                   help="which split to show (default: test)")  # fmt: skip
    group = p.add_mutually_exclusive_group()
    group.add_argument("--index", type=int, nargs="+", default=None, metavar="I", help="show these image indices")
    group.add_argument("--grid", type=int, default=8, metavar="N",
                       help="show the first N×N images as an N×N grid (default: 8)")  # fmt: skip
    p.add_argument("--scale", type=int, default=4, help="pixels per image pixel (default: 4)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    _data_dir(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_show)


def _data_dir(parser, help_text: str = "read the data set from DIR only (either file-name spelling, gz or raw)"):
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help=help_text)


# ------------------------------------------------------------------------------------------------------ commands


def cmd_info(args) -> int:
    import numpy as np

    from digitlab.data.dataset import load_dataset

    ds = load_dataset(args.name, args.data_dir, download=args.download, quiet=args.json)
    splits = {}
    for split in ("train", "test"):
        images, labels = ds.split(split)
        counts = np.bincount(labels, minlength=len(ds.class_names))  # (C,)
        splits[split] = {"count": int(len(labels)), "shape": list(images.shape), "per_class": counts.tolist()}
    result = {
        "name": ds.name,
        "source": str(ds.source),
        "found_by": ds.how,
        "checksums": {"status": "verified", "sha256": ds.checksums},
        "class_names": ds.class_names,
        "splits": splits,
        "notice": ds.notice,
    }
    lines = [
        f"{ds.name}: found in {ds.source} ({ds.how})",
        f"checksums: {len(ds.checksums)} files verified (sha256 of uncompressed content)",
    ]
    for split, s in splits.items():
        per = " ".join(f"{c}:{n}" for c, n in zip(ds.class_names, s["per_class"]))
        lines.append(f"{split}: {s['count']} images {tuple(s['shape'][1:])}  per class: {per}")
    emit(args, result, "\n".join(lines))
    return 0


def cmd_fetch(args) -> int:
    from digitlab.data.sources import fetch

    found = fetch(args.name, args.data_dir, progress=not args.json, timeout=args.timeout)
    result = {
        "name": found.spec.name,
        "source": str(found.source),
        "found_by": found.how,
        "files": {stem: str(found.paths[role]) for role, stem in found.spec.files.items()},
        "checksums": found.checksums,
    }
    verb = {"download": "downloaded to", "cache": "available in", "data_dir": "imported into"}.get(found.how, "found in")
    emit(args, result, f"{found.spec.name}: {verb} {found.source} ({found.how}); {len(found.checksums)} files verified")
    return 0


def cmd_verify(args) -> int:
    from digitlab.data.sources import verify

    report = verify(args.name, args.data_dir)
    lines = [f"{report['name'] or 'unknown data set'}: {report['source']}"]
    for f in report["files"]:
        state = "ok" if f["ok"] else f"FAILED: {f['problem']}"
        lines.append(f"  {Path(f['path']).name}: {state}")
    lines.append("all checksums match" if report["ok"] else "checksum verification FAILED")
    if not report["ok"] and report["name"] and args.data_dir is None:
        lines.append(f"repair: `digitlab data fetch {report['name']}` replaces the bad files with verified copies "
                     "from a mirror")
    emit(args, report, "\n".join(lines))
    return 0 if report["ok"] else 1


def cmd_show(args) -> int:
    import numpy as np

    from digitlab.data.dataset import load_dataset
    from digitlab.errors import ConfigError

    if args.scale < 1 or args.scale > 32:
        raise ConfigError(f"--scale must be in 1..32, got {args.scale}")
    ds = load_dataset(args.name, args.data_dir, download=False, quiet=args.json)
    images, labels = ds.split(args.split)
    if args.index is not None:
        bad = [i for i in args.index if not -len(images) <= i < len(images)]
        if bad:
            raise ConfigError(f"--index {bad[0]} out of range for {args.split} split of {len(images)} images")
        idx = np.asarray(args.index, dtype=np.int64)
    else:
        if not 1 <= args.grid <= 100:
            raise ConfigError(f"--grid must be in 1..100, got {args.grid}")
        idx = np.arange(min(args.grid * args.grid, len(images)))
    cols = args.grid if args.index is None else int(np.ceil(np.sqrt(len(idx))))
    path = write_grid_png(args.out, images[idx], labels[idx], ds.class_names, cols=cols, scale=args.scale)
    result = {"name": ds.name, "split": args.split, "indices": idx.tolist(), "labels": labels[idx].tolist(),
              "out": str(path)}  # fmt: skip
    emit(args, result, f"wrote {path} ({len(idx)} {args.split} images of {ds.name})")
    return 0


LABEL_STRIP = 40  # grey level of the strip under each tile that holds its label (white text on it)


def write_grid_png(path, images, labels, class_names, *, cols: int, scale: int = 4, pad: int = 2) -> Path:
    """A grid of upscaled images, white ink on black like MNIST, each with its label in white on a grey strip
    underneath: the label's font is about a quarter of the tile's height (at least 12 px), narrowed to the tile's
    width for long class names (Pillow's bundled font)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from digitlab.fsutil import atomic_write

    n, h, w = images.shape
    rows = -(-n // cols)
    tile_h, tile_w = h * scale, w * scale
    size = max(12, round(0.25 * tile_h))  # font size in pixels
    names = [str(class_names[int(label)]) for label in labels]
    fonts = {}
    for name in set(names):  # the largest size up to `size` at which the name fits the tile's width
        fit = size
        while fit > 8 and ImageFont.load_default(fit).getlength(name) > tile_w - 2:
            fit -= 1
        fonts[name] = ImageFont.load_default(fit)
    strip_h = round(size * 1.3)  # the label strip under each tile
    cell_w, cell_h = tile_w + pad, tile_h + strip_h + pad
    sheet = np.zeros((rows * cell_h + pad, cols * cell_w + pad), dtype=np.uint8)  # (H, W) greyscale canvas
    big = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)  # (n, h, w) -> (n, h*s, w*s)
    for k in range(n):  # n ≤ 10,000 small tiles: a loop over tiles, not pixels
        r, c = divmod(k, cols)
        y, x = pad + r * cell_h, pad + c * cell_w
        sheet[y : y + tile_h, x : x + tile_w] = big[k]
        sheet[y + tile_h : y + tile_h + strip_h, x : x + tile_w] = LABEL_STRIP
    img = Image.fromarray(sheet)  # uint8 (H, W) -> mode "L"
    draw = ImageDraw.Draw(img)
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        centre = (pad + c * cell_w + tile_w / 2, pad + r * cell_h + tile_h + strip_h / 2)
        draw.text(centre, name, fill=255, font=fonts[name], anchor="mm")  # centred in the strip
    path = Path(path)
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG")
    return path
