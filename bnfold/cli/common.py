"""Options and helpers shared by several commands."""

from __future__ import annotations

import click

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D0xD1x...",
    help="Concrete shape for an input with dynamic dims (repeatable). A bare D0xD1x... applies to a "
    "single-input model. Default: batch 1 for a dynamic first dim; other dynamic dims must be given.",
)
inputs_option = click.option(
    "--inputs",
    "input_files",
    multiple=True,
    metavar="FILE",
    help="Input data instead of random: an .npz with one array per input name, or NAME:file.npy (repeatable).",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
