"""The `bnfold` command line: a thin click layer over the public API.

`bnfold MODEL -o OUT` folds (the default command); `verify`, `bench` and `export` are subcommands.
Heavy modules (onnx, onnxruntime, torch) are imported inside the commands, so `bnfold --help` starts fast.
"""

from __future__ import annotations

import os
import sys

import click

from .. import interrupts
from ..errors import EXIT_INTERNAL, BnfoldError
from . import bench_cmd, check_cmd, export_cmd, fold_cmd, verify_cmd
from .common import exit_codes_epilog

EXIT_CODES_HELP = exit_codes_epilog()


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `fold`: `bnfold model.onnx -o out.onnx`."""

    default_command = "fold"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bnfold: interrupted", err=True)
            ctx.exit(130)
        except Exception as error:
            if interrupts.received():  # an error a library made of the Ctrl-C on its way up
                raise interrupts.Interrupted() from None
            if isinstance(error, BnfoldError):
                click.echo(f"bnfold: error: {error}", err=True)
                ctx.exit(error.exit_code)
            if os.environ.get("BNFOLD_DEBUG"):  # a bug in bnfold: one line for the user, the traceback on request
                raise
            click.echo(
                f"bnfold: internal error: {type(error).__name__}: {error} "
                "(please report it; BNFOLD_DEBUG=1 shows the traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


@click.group(
    cls=DefaultGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(package_name="bnfold", prog_name="bnfold")
def cli():
    """Fold eval-mode BatchNormalization into neighbouring Conv / ConvTranspose / Gemm / MatMul weights.

    \b
      bnfold model.onnx -o folded.onnx        fold, verify, write (same as `bnfold fold ...`)
      bnfold models/ -o folded/ -j 4          fold every *.onnx below models/, 4 worker processes
      bnfold check models/                    exit 1 if a BN could still be folded (CI / pre-commit gate)
      bnfold verify model.onnx folded.onnx    compare two models numerically
      bnfold bench model.onnx folded.onnx     latency on ONNX Runtime CPU / CUDA
      bnfold export pkg.mod:build -o net.onnx --input-shape 1x3x224x224   PyTorch -> ONNX

    Run `bnfold COMMAND --help` for each command's options.
    """


cli.add_command(fold_cmd.fold)
cli.add_command(fold_cmd.rules)
cli.add_command(check_cmd.check)
cli.add_command(verify_cmd.verify)
cli.add_command(bench_cmd.bench)
cli.add_command(export_cmd.export)


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="bnfold")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
