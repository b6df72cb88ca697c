"""Ctrl-C in a process of bnfold's own (`python -m bnfold`, the console script): the first one raises Interrupted,
a BaseException that no `except KeyboardInterrupt` on the way (click's "Aborted!") takes, and later ones are
ignored so that no cleanup is cut short.

`received()` says whether one came. A library may turn the interruption into an error of its own on the way up
(pybind11 makes any exception while ONNX Runtime's extension initializes an ImportError, which bnfold would report
as "onnxruntime is not installed"): the command line then reports the interruption, not that error.
"""

import signal

_received = False


class Interrupted(BaseException):
    """Ctrl-C, in a process of its own."""


def _on_interrupt(signum, frame) -> None:
    global _received
    _received = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup that follows is not interrupted again
    raise Interrupted()


def catch() -> None:
    """Turn Ctrl-C into Interrupted, unless SIGINT is ignored (a background job started by a shell)."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # not the main thread
        pass


def received() -> bool:
    return _received
