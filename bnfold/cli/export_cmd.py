"""`bnfold export pkg.mod:build -o net.onnx --input-shape 1x3x224x224 [--fold]`: PyTorch -> ONNX, every BN kept."""

from __future__ import annotations

import os
import sys

import click

from ..errors import UsageError, VerificationFailed
from .common import (ToleranceCommand, atol_option, exit_codes_epilog, json_target_option, parse_tolerances,
                     quiet_option, rtol_option, seed_option, write_json)

EXPORTERS = ("torchscript", "dynamo")  # mirrors bnfold.exporting.EXPORTERS; kept here so --help never imports torch


def split_names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


@click.command("export", cls=ToleranceCommand, epilog=exit_codes_epilog(
    "Here exit 1 means a comparison is out of tolerance; 2 also covers a module that cannot be imported, built or "
    "exported."))
@click.argument("target", metavar="MODULE:CALLABLE")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ONNX model.")
@click.option("--input-shape", "input_shapes", multiple=True, required=True, metavar="[NAME:]D0xD1x...",
              help="Shape of each forward argument, in order (repeat for several inputs); random float32 data of "
              "this shape is the example input. NAME: also names the ONNX input.")
@click.option("--dynamic-batch", is_flag=True, help="Make dim 0 of every input and output dynamic ('batch').")
@click.option("--opset", type=click.IntRange(min=7), default=None,
              help="ONNX opset. Default: 17 (torchscript), 18 (dynamo, which implements nothing older).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="torchscript", show_default=True,
              help="torch.onnx exporter; either is set up so that every BatchNorm stays in the graph.")
@click.option("--input-names", metavar="A,B,...", help="Comma-separated ONNX input names (default input, input_0..).")
@click.option("--output-names", metavar="A,B,...",
              help="Comma-separated ONNX output names (default output, output_0..).")
@click.option("--fold", "fold_model", is_flag=True,
              help="Fold BNs with bnfold's rules, then check PyTorch vs exported vs folded on the same inputs.")
@atol_option
@rtol_option
@seed_option
@click.option("--randomize-bn", is_flag=True,
              help="Export a copy of the module whose BatchNorms have random statistics and affine parameters "
                   "(seeded by --seed): a fresh module's statistics (mean 0, var 1) make every fold nearly the "
                   "identity, so the comparison proves little. The model written has the random values.")
@click.option("--force", is_flag=True, help="Write the model even when a comparison is out of tolerance.")
@json_target_option
@quiet_option
def export(target, output, input_shapes, dynamic_batch, opset, exporter, input_names, output_names, fold_model,
           atol, rtol, seed, randomize_bn, force, json_target, quiet):
    """Export the nn.Module built by MODULE:CALLABLE to ONNX with every BatchNorm kept, and report each BN.

    \b
      bnfold export mypkg.models:build_net -o net.onnx --input-shape 1x3x224x224
      bnfold export mypkg.models:build_net -o net.onnx --input-shape 1x3x224x224 --fold --dynamic-batch

    MODULE is imported and CALLABLE() is called with no arguments: this runs your own code (the current
    directory is on the import path, as with `python -m`). The returned module is put in eval() for export, so
    BatchNorm uses its running statistics rather than batch statistics.

    PyTorch's exporters fuse some Conv+BN pairs on their own and keep others; bnfold exports with every BN kept
    and prints how many the export has. The PyTorch output is always compared with the exported model's; with
    --fold, bnfold folds the BNs with its own rules (each folded, or kept with a reason) and compares PyTorch,
    exported and folded models pairwise. Exit 1, writing nothing unless --force, when any pair is out of
    tolerance. Needs PyTorch: pip install 'bnfold[torch]'.
    """
    from ..exporting import build_module, export as export_module, import_torch

    torch = import_torch()  # the install hint comes before importing the user's code, which imports torch itself
    example_inputs, shape_names = _example_inputs(input_shapes, seed, torch)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = build_module(target)
    source = getattr(sys.modules.get(target.partition(":")[0]), "__file__", None)
    if source:  # the one file export reads: the model must not replace it
        from ..file_identity import refuse_overlaps

        refuse_overlaps([(source, "the module's source")], [(output, "the exported model")])
    try:
        result = export_module(
            module,
            example_inputs,
            output,
            fold=fold_model,
            exporter=exporter,
            opset=opset,
            dynamic_batch=dynamic_batch,
            input_names=split_names(input_names) or shape_names,
            output_names=split_names(output_names),
            atol=parse_tolerances(atol, "--atol"),
            rtol=parse_tolerances(rtol, "--rtol"),
            force=force,
            randomize_bn=randomize_bn,
            randomize_seed=seed,
        )
    except VerificationFailed as failure:
        if failure.result is not None:
            _show(failure.result, json_target, quiet=False)
        raise
    _show(result, json_target, quiet)


def _example_inputs(input_shapes, seed: int, torch):
    """Seeded random float32 tensors, one per --input-shape, and the input names they give (all or none)."""
    import numpy as np

    from ..inputs import parse_shape_spec, random_array

    specs = [parse_shape_spec(text) for text in input_shapes]
    names = [name for name, _shape in specs]
    if any(names) and not all(names):
        raise UsageError("--input-shape: name every input (NAME:D0xD1x...) or none of them")
    rng = np.random.default_rng(seed)
    tensors = tuple(torch.from_numpy(random_array(np.float32, shape, rng)) for _name, shape in specs)
    return tensors, (names if all(names) else None)


def _show(result, json_target, quiet: bool) -> None:
    """The JSON where --json sends it; the text unless it went to stdout, or -q and all passed."""
    if json_target is not None:
        write_json(result.to_dict(), json_target)
    if json_target != "-" and not (quiet and result.passed):
        click.echo(result.render())
