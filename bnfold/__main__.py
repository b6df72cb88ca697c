"""`python -m bnfold` and the `bnfold` console script.

The entry point imports the command line inside its own try: Ctrl-C at any moment, during the imports too, ends
with one line `bnfold: interrupted` and exit code 130, never a traceback. In a process of its own (argv None) the
first Ctrl-C raises bnfold.interrupts.Interrupted, which unwinds to here through every cleanup (temporary files
removed, batch workers killed).

A finished command leaves the process without the interpreter's teardown: standard streams are flushed and atexit
handlers run (multiprocessing, tempfile, logging), then os._exit. The teardown only frees memory the operating
system frees anyway, and onnx's C++ extension alone spends about 60 ms in it. BNFOLD_FULL_EXIT=1 (for coverage
tools that write their data at teardown) keeps the ordinary exit.
"""

import atexit
import os
import signal
import sys

from bnfold import interrupts


def main(argv=None) -> None:
    """Run the command line; with argv None (the process's own arguments) end the process as the module says."""
    try:
        try:
            if argv is None:
                interrupts.catch()
            _run(argv)
        except (KeyboardInterrupt, interrupts.Interrupted):
            sys.stderr.write("bnfold: interrupted\n")
            raise SystemExit(130) from None
    except SystemExit as exit_:
        if argv is not None or os.environ.get("BNFOLD_FULL_EXIT"):
            raise
        _leave(exit_.code)


def _run(argv) -> None:
    from .cli import main as run_cli

    run_cli(argv)


def _leave(code) -> None:
    """sys.exit(code), less the interpreter's teardown."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command is over: a late Ctrl-C changes nothing
    except ValueError:
        pass
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
