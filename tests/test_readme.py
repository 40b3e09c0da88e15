"""Every example command in README.md works as written on a fresh clone after `make demo`.

    .venv/bin/python -m pytest tests/test_readme.py -q

The commands are taken from the README itself: the `$ ...` lines of its console blocks and the inline `digitlab ...`
code spans. Each must parse with digitlab's own argument parser (every subcommand and flag exists), name shipped
recipes and registered data sets, and refer only to files that are in the repository or that an earlier example
(or `make demo`) creates. The cheap ones (data, recipes, sample plots) are also run, in a scratch folder, after the
same MNIST import `make demo` does; the ones that train for minutes are only checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PATH_SUFFIXES = (".png", ".jpg", ".jpeg", ".toml", ".safetensors", ".csv", ".onnx", ".html", ".json")
OUTPUT_FLAGS = ("--out", "--show-input")  # their values are written, not read
MAKE_DEMO_MAKES = ("runs/demo-",)  # make demo's run folder: runs/demo-YYYYmmdd-HHMMSS
OTHER_TOOLS = ("createdb", "make")  # commands of other programs shown in the README
# Run for real: quick and needing nothing but the data `make demo` imports.
CHEAP = (("recipes",), ("data", "info"), ("data", "verify"), ("data", "fetch"), ("data", "show"),
         ("plot", "samples"), ("plot", "augment"))


FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (make test installs it)


def readme_commands() -> list[tuple[str, list[str]]]:
    """[(where, argv)] in README order: console `$ ` lines, then inline `digitlab ...` spans (argv[0] the program)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```(?:console|sh)\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append((f"console: {line}", shlex.split(line[2:], comments=True)))
            elif line.startswith("make "):
                commands.append((f"sh: {line}", shlex.split(line, comments=True)))
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`(digitlab [^`]+)`", prose):
        commands.append((f"inline: {span}", shlex.split(span)))
    return commands


def looks_like_path(token: str) -> bool:
    return "://" not in token and not token.startswith("-") and ("/" in token or token.endswith(PATH_SUFFIXES))


def test_the_readme_has_examples_of_every_area():
    subcommands = {argv[1] for _, argv in readme_commands() if argv[0] == "digitlab"}
    assert {"train", "evaluate", "predict", "plot", "serve", "data", "sweep", "export", "reproduce",
            "recipes", "gradcheck"} <= subcommands


def test_every_readme_command_parses_and_refers_to_real_things():
    """Flags and subcommands exist, recipes and data sets are shipped, every file read is in the repository or made
    by an earlier example."""
    from digitlab.cli import build_parser
    from digitlab.data.sources import REGISTRY
    from digitlab.recipes import recipe_names

    parser = build_parser()
    made: list[str] = list(MAKE_DEMO_MAKES)
    problems = []
    for where, argv in readme_commands():
        if argv[0] in OTHER_TOOLS:
            if argv[0] == "make":
                assert re.search(rf"^{re.escape(argv[1])}:", (REPO / "Makefile").read_text(), re.M), where
            continue
        assert argv[0] == "digitlab", f"{where}: not a digitlab command"
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            problems.append(f"{where}: digitlab's parser refuses it (see stderr)")
            continue
        recipe = getattr(args, "recipe", None)
        if recipe and not recipe.endswith(".toml") and recipe not in recipe_names():
            problems.append(f"{where}: no recipe {recipe!r}")
        dataset = getattr(args, "dataset", None) or (getattr(args, "name", None) if argv[1] == "data" else None)
        if dataset and dataset not in REGISTRY:
            problems.append(f"{where}: no data set {dataset!r}")
        outputs = {argv[i + 1] for i, token in enumerate(argv[:-1]) if token in OUTPUT_FLAGS}
        for token in argv[2:]:
            if not looks_like_path(token) or token in outputs:
                continue
            token = token.rstrip("/")
            inline = where.startswith("inline")  # prose: may mention a file an example further down makes
            exists = (REPO / token).exists()
            if not exists and not any(token == m.rstrip("/") or token.startswith(m) for m in made) and not inline:
                problems.append(f"{where}: {token} is neither in the repository nor made by an earlier example")
        made += [o.rstrip("/") + "/" for o in sorted(outputs)]
    assert problems == []


@pytest.fixture()
def after_make_demo(mnist_dir, tmp_path, monkeypatch, capsys):
    """A scratch folder as the current directory, with MNIST imported into the (isolated) user cache as `make demo`
    does (`digitlab data fetch mnist --data-dir ../shared/data/mnist`)."""
    from digitlab.cli import main

    assert main(["data", "fetch", "mnist", "--data-dir", str(mnist_dir)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_cheap_readme_commands_run(after_make_demo, capsys):
    from digitlab.cli import main

    ran = []
    for where, argv in readme_commands():
        if argv[0] != "digitlab" or not any(tuple(argv[1:1 + len(c)]) == c for c in CHEAP):
            continue
        if "fashion-mnist" in argv and not FASHION_SYSTEM_DIR.is_dir():  # no download here: Debian's package only
            continue
        rc = main(argv[1:])
        out, err = capsys.readouterr()
        assert rc == 0, f"{where}: exit {rc}: {err}"
        assert "bundled" not in out + err, f"{where}: fell back to the sample instead of the imported MNIST"
        outputs = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == "--out"]
        assert all((after_make_demo / o).is_file() for o in outputs), where
        ran.append(where)
    assert len(ran) >= 6, ran
