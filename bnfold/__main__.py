"""`python -m bnfold` and the `bnfold` console script.

The entry point imports the command line inside its own try: Ctrl-C at any moment, during the imports too, ends
with one line `bnfold: interrupted` and exit code 130, never a traceback.
"""

import sys


def main(argv=None) -> None:
    try:
        from .cli import main as run_cli

        run_cli(argv)
    except KeyboardInterrupt:
        sys.stderr.write("bnfold: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
