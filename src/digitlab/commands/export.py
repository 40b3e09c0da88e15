"""`digitlab export MODEL --format onnx [--out FILE]`: a trained model for other runtimes.

    digitlab export runs/mlp/model.safetensors --format onnx              # -> runs/mlp/model.onnx
    digitlab export runs/mlp/model.safetensors --format onnx --out mlp.onnx --json

The ONNX file takes uint8 images [N, 28, 28] (input `images`) and gives float32 probabilities [N, classes]
(output `probabilities`); see digitlab.export_onnx. Needs the extra: pip install 'digitlab[onnx]'.
"""

from __future__ import annotations

from pathlib import Path

from digitlab.commands._common import add_json_flag, emit
from digitlab.errors import ConfigError

FORMATS = ("onnx",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained model for other runtimes (ONNX)",
        description="Export a model written by digitlab train, MLP or CNN, to another format (ONNX: uint8 images "
        "[N, 28, 28] in, float32 probabilities out, normalisation inside the graph).",
    )
    p.add_argument("model", metavar="MODEL", type=Path,
                   help="a model file written by digitlab train (model.safetensors)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="the format to write (default: onnx)")
    p.add_argument("--out", metavar="FILE", type=Path, default=None,
                   help="where to write it (default: MODEL with the format's suffix, e.g. model.onnx)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from digitlab.export_onnx import OPSET, describe, export_onnx
    from digitlab.nn.model import load

    out = args.out if args.out is not None else args.model.with_suffix(f".{args.format}")
    if out.resolve() == args.model.resolve():
        raise ConfigError(f"--out {out} is the model file itself; choose another name")
    model = load(args.model)
    path = export_onnx(model, out)
    result = {"model": str(args.model), "out": str(path), "format": args.format, "opset": OPSET,
              "bytes": path.stat().st_size, **describe(model)}
    emit(args, result, f"wrote {path} (ONNX opset {OPSET}, {result['bytes']:,} bytes): {result['input']} -> "
                       f"{result['output']}")
    return 0
