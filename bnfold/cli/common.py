"""Options and helpers shared by several commands."""

from __future__ import annotations

import re

import click

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D0xD1x...",
    help="Concrete shape for an input with dynamic dims (repeatable). A bare D0xD1x... applies to a "
    "single-input model. Default: batch 1 for a dynamic first dim; other dynamic dims share the size of a dim "
    "with the same name, else 32, 64, 128, 224, 320 are tried until the original model runs.",
)
inputs_option = click.option(
    "--inputs",
    "input_files",
    multiple=True,
    metavar="FILE",
    help="Input data instead of random: an .npz with one array per input name, or NAME:file.npy (repeatable).",
)
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Seed for random inputs (a non-negative integer).")

TOLERANCE_OPTIONS = ("--atol", "--rtol")
# A NAME:NUMBER word, as in `--atol 1e-5 logits:1e-4`; names may contain ':' (TensorFlow's 'logits:0').
_OVERRIDE_WORD = re.compile(r"^[^-\s].*:[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")



class ToleranceCommand(click.Command):
    """Lets `--atol 1e-5 logits:1e-4` mean `--atol 1e-5 --atol logits:1e-4`: NAME:NUMBER words that follow a
    tolerance option's value are given to the same option."""

    def parse_args(self, ctx, args):
        expanded, option, index = [], None, 0
        while index < len(args):
            word = args[index]
            if word == "--":
                expanded.extend(args[index:])
                break
            if option and _OVERRIDE_WORD.match(word):
                expanded += [option, word]
            elif word in TOLERANCE_OPTIONS and index + 1 < len(args):
                option = word
                expanded += [word, args[index + 1]]
                index += 1
            else:
                option = word.partition("=")[0] if word.partition("=")[0] in TOLERANCE_OPTIONS else None
                expanded.append(word)
            index += 1
        return super().parse_args(ctx, expanded)


def parse_tolerances(values, option: str):
    """('1e-5', 'logits:1e-4') -> {None: 1e-5, 'logits': 1e-4}; None when the option was not given."""
    if not values:
        return None
    tolerances = {}
    for text in values:
        name, _, number = text.rpartition(":")
        try:
            value = float(number)
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected a number or NAME:NUMBER", param_hint=option) from None
        if not value >= 0:
            raise click.BadParameter(f"{text!r}: tolerance must be a non-negative number", param_hint=option)
        tolerances[name or None] = value
    return tolerances


atol_option = click.option(
    "--atol", "atol", multiple=True, metavar="[NAME:]VALUE",
    help="Absolute tolerance: a bare number for every output, NAME:VALUE for one output (`--atol 1e-5 "
    "logits:1e-4`, or repeat --atol). Default: by dtype (see `bnfold verify --help`).")
rtol_option = click.option(
    "--rtol", "rtol", multiple=True, metavar="[NAME:]VALUE",
    help="Relative tolerance (scale: |reference|), same forms as --atol. Default: by dtype.")

def _json_target(ctx, param, value):
    """`bnfold --json a.onnx b.onnx` would take a.onnx as the report's file: refuse a model-looking target."""
    if value is not None and value.endswith(".onnx"):
        raise click.BadParameter(f"{value!r} looks like a model, not a JSON file; give a .json path or put --json "
                                 "after the models", param_hint="--json")
    return value


def json_option(with_file: str = "prints the text as usual"):
    """--json [FILE], the same on every command; `with_file` says what text a command still prints with a FILE."""
    return click.option(
        "--json", "json_target", is_flag=False, flag_value="-", default=None, metavar="[FILE]", callback=_json_target,
        help="The result as JSON: `--json` alone (or `--json -`) prints it on stdout instead of the text; "
             f"`--json FILE` writes it to FILE (atomically) and {with_file}.")


json_target_option = json_option()
quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="Print only what failed (nothing when all is well); errors still go to stderr.")
runs_option = click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
                           help="Random input draws to compare (seed, seed+1, ...); inputs given by file stay fixed.")

# The exit codes of every command, worded once: `bnfold --help`, each command's --help and the README's table.
EXIT_CODES = (
    ("0", "success; BNs that had to stay are listed with their reason (not an error)"),
    ("1", "a check failed: the numerical equivalence check (fold, verify, export; nothing is written unless "
          "--force) or a `bnfold check` limit"),
    ("2", "bad usage, unreadable or invalid input, output that cannot be written; no input size for the end-to-end "
          "check (`bnfold verify`, or `--require-end-to-end`); a missing execution provider (`bnfold bench`)"),
    ("3", "internal error (a bug: please report it; BNFOLD_DEBUG=1 shows the traceback)"),
    ("130", "interrupted (Ctrl-C), at any moment once Python has started bnfold (imports and batch workers "
            "included): one line `bnfold: interrupted`, no temporary file left"),
)
WORST_EXIT_CODE = "With several models the exit code is the worst model's: 130 > 3 > 2 > 1 > 0."


def exit_codes_epilog(note: str = "") -> str:
    """The exit-code table as click prints it (`\b` keeps the lines), after an optional command-specific note."""
    import textwrap

    lines = ["\b", "Exit codes:"]
    for code, meaning in EXIT_CODES:
        wrapped = textwrap.wrap(meaning, 96)
        lines.append(f"  {code:<4} {wrapped[0]}")
        lines += [f"       {more}" for more in wrapped[1:]]
    lines.append(WORST_EXIT_CODE)
    block = "\n".join(lines)
    return f"{note}\n\n{block}" if note else block


def refuse_report_overlaps(models, reports) -> None:
    """Before any work: refuse a report file (`--json FILE`, `--plot FILE`; pairs of path and what it is) that is a
    model the command reads, an external data file such a model names, or another report (bnfold.file_identity)."""
    from ..file_identity import refuse_overlaps_with_models

    writes = [(path, what) for path, what in reports if path not in (None, "-")]
    if writes:
        refuse_overlaps_with_models(list(models), writes)


def write_json(data: dict, target: str) -> None:
    """JSON to stdout for '-', else atomically to the file (same output rules as models)."""
    import json

    from ..saving import save_text

    text = json.dumps(data, indent=2)
    if target == "-":
        click.echo(text)
    else:
        save_text(text + "\n", target)
