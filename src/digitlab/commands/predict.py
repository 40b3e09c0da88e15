"""`digitlab predict MODEL IMAGE...`: which digit is in each photo or drawing.

    digitlab predict runs/mlp/model.safetensors my-seven.jpg
    digitlab predict runs/mlp/model.safetensors photos/ 'scans/*.png' --top 2
    cat digit.png | digitlab predict runs/mlp/model.safetensors -
    digitlab predict runs/mlp/model.safetensors photos/ --json --show-input inputs/

IMAGE may be a file, a folder (the images inside it, sorted by name), a glob pattern (expanded here too, for
shells that do not) or `-` for one image read from stdin. Each image goes through `digitlab.images`
(MNIST-style preprocessing) and prints one line: the file, the digit and its probability, and the
runner-up(s). A file that cannot be used gets one clear error line on stderr (`error` in `--json`), the
others are still predicted, and the exit status is 1 when any failed. An image whose ink does not look like a
digit (a dot, a dash, a scatter, a scrawl) or that the model is not sure about gets "no digit" with the reason
(`digit` null and `reason` in `--json`; see digitlab.images.RejectRules). `--show-input DIR` writes the 28x28
image the model really got (NAME.png) and a 10x enlargement (NAME-x10.png) for each input.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from digitlab.commands._common import add_json_flag, emit
from digitlab.errors import ConfigError, DigitlabError, ImageError

MAX_STEM_BYTES = 200  # file names are at most 255 bytes; leaves room for "-x10.png", "-2" and the .tmp name


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the digit in photos or drawings",
        description="Predict the digit in photos or drawings (files, folders, globs, or - for stdin).",
    )
    p.add_argument("model", metavar="MODEL", type=Path, help="a model file written by digitlab train (model.safetensors)")
    p.add_argument("images", metavar="IMAGE", type=str, nargs="+",
                   help="image file, folder of images, glob pattern, or - to read one image from stdin")
    p.add_argument("--top", type=int, default=3, help="how many best classes to report per image (default: 3)")
    p.add_argument("--show-input", metavar="DIR", type=Path, default=None,
                   help="write the 28x28 input the model got (and a 10x enlargement) as PNGs into DIR")
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)


@dataclass(frozen=True)
class Item:
    """One input to predict: `file` is what the user sees; `src` is a Path or the bytes read from stdin."""

    file: str
    src: object = None
    error: str | None = None


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(args: list[str], stdin=None) -> list[Item]:
    """Files, folders (their images, sorted), glob patterns (sorted matches) and `-` (stdin bytes)."""
    from digitlab.images import read_bytes

    items: list[Item] = []
    suffixes = None
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            try:  # capped: `- </dev/zero` must not read forever
                items.append(Item("-", read_bytes(stream, "<stdin>")))
            except ImageError as exc:
                items.append(Item("-", error=str(exc)))
            continue
        path = Path(arg)
        if path.is_dir():
            suffixes = suffixes or _image_suffixes()
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            items.extend(Item(str(p), p) for p in found)
            if not found:
                items.append(Item(arg, error=f"{arg}: no images in this folder"))
        elif path.exists() or not glob.has_magic(arg):
            items.append(Item(arg, path))  # a missing file gets its "no such file" error when it is read
        else:
            matches = sorted(m for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            items.extend(Item(m, Path(m)) for m in matches)
            if not matches:
                items.append(Item(arg, error=f"{arg}: no file matches this pattern"))
    return items


class _InputWriter:
    """Writes NAME.png (28x28) and NAME-x10.png per input into a folder, never reusing a name in one run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.used: set[str] = set()
        try:  # checked once, before any prediction: a bad --show-input is one clear error, not a traceback
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--show-input {folder}: cannot create the folder ({exc.strerror or exc})") from None
        if not os.access(self.folder, os.W_OK):
            raise ConfigError(f"--show-input {folder}: the folder is not writable")

    def name_for(self, file: str) -> str:
        stem = "stdin" if file == "-" else (Path(file).stem or "image")
        stem = stem.encode("utf-8", "surrogateescape")[:MAX_STEM_BYTES].decode("utf-8", "surrogateescape")
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}"
        self.used.add(name)
        return name

    def write(self, file: str, x) -> Path:
        from PIL import Image

        from digitlab.fsutil import atomic_write

        name = self.name_for(file)
        small = Image.fromarray(x, mode="L")
        path = self.folder / f"{name}.png"
        for target, img in ((path, small), (self.folder / f"{name}-x10.png", small.resize((280, 280), Image.Resampling.NEAREST))):
            with atomic_write(target, "wb") as f:
                img.save(f, format="PNG")
        return path


def _line(file: str, result: dict, class_names: list[str]) -> str:
    def label(i: int) -> str:
        name = class_names[i] if i < len(class_names) else str(i)
        return str(i) if name == str(i) else f"{i} ({name})"

    if result["digit"] is None:
        reason = result.get("reason")
        if reason is None or reason == "no ink found":
            return f"{file}: no digit found"
        best = result["top"][0][0]
        return f"{file}: no digit: {reason} (the model's best guess: {label(best)}, {100 * result['top'][0][1]:.1f}%)"
    best, *rest = result["top"]
    text = f"{file}: {label(best[0])} ({100 * best[1]:.1f}%)"
    if rest:
        text += "  runner-up: " + ", ".join(f"{label(i)} ({100 * p:.1f}%)" for i, p in rest)
    return text


def cmd_predict(args) -> int:
    import digitlab
    from digitlab.images import predict_image

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1 (got {args.top})")
    model = digitlab.load(args.model)
    class_names = [str(c) for c in getattr(model, "class_names", [])]
    writer = _InputWriter(args.show_input) if args.show_input is not None else None
    records, failed = [], 0
    for item in expand_inputs(args.images):
        record = {"file": item.file, "digit": None, "probabilities": None, "error": item.error}
        if item.error is None:
            try:
                name = "<stdin>" if item.file == "-" else item.file
                result = predict_image(model, item.src, top=args.top, name=name)
            except ImageError as exc:
                record["error"] = str(exc)
            else:
                record.update(digit=result["digit"], reason=result["reason"], probabilities=result["probabilities"],
                              top=[list(t) for t in result["top"]])
                line = _line(item.file, result, class_names)
                if writer is not None:
                    try:
                        record["input"] = str(writer.write(item.file, result["input"]))
                        line += f"  (input: {record['input']})"
                    except OSError as exc:
                        record["error"] = f"{item.file}: cannot write its 28x28 input to {writer.folder}: {exc.strerror or exc}"
                    except DigitlabError as exc:  # that image's problem only; the batch goes on
                        record["error"] = f"{item.file}: cannot write its 28x28 input: {exc}"
                if not args.json:
                    print(line, flush=True)
        if record["error"] is not None:
            failed += 1
            if not args.json:
                print(f"digitlab: error: {record['error']}", file=sys.stderr, flush=True)
        records.append(record)
    if args.json:
        emit(args, records)
    return 1 if failed else 0
