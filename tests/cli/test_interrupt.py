"""Ctrl-C at any moment, the imports included: exit 130 and one line `bnfold: interrupted`, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A real SIGINT delivered to the process while the entry point imports click (the first heavy import).
INTERRUPT_DURING_IMPORT = textwrap.dedent("""
    import builtins, os, signal
    # A shell that starts jobs in the background hands them SIGINT ignored; a user's terminal does not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real_import = builtins.__import__
    def interrupting_import(name, *args, **kwargs):
        if name == "click":
            os.kill(os.getpid(), signal.SIGINT)
        return real_import(name, *args, **kwargs)
    builtins.__import__ = interrupting_import
    from bnfold.__main__ import main
    main(["--help"])
""")


@pytest.mark.slow
def test_sigint_during_imports_in_a_real_process():
    child = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_IMPORT], capture_output=True, text=True,
                           cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 130, child.stderr
    assert child.stderr == "bnfold: interrupted\n" and child.stdout == ""


def test_keyboard_interrupt_while_importing_the_cli(monkeypatch, capsys):
    import bnfold.__main__ as entry

    for name in [name for name in sys.modules if name == "bnfold.cli" or name.startswith("bnfold.cli.")]:
        monkeypatch.delitem(sys.modules, name)

    class InterruptingFinder:
        def find_spec(self, name, path=None, target=None):
            if name == "bnfold.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.setattr(sys, "meta_path", [InterruptingFinder(), *sys.meta_path])
    with pytest.raises(SystemExit) as raised:
        entry.main(["--help"])
    assert raised.value.code == 130
    assert capsys.readouterr().err == "bnfold: interrupted\n"



# A real SIGINT while click parses the arguments: click would say "Aborted!" and exit 1.
INTERRUPT_WHILE_PARSING = textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import click
    real_parse_args = click.Command.parse_args
    def interrupting_parse_args(self, ctx, args):
        os.kill(os.getpid(), signal.SIGINT)
        return real_parse_args(self, ctx, args)
    click.Command.parse_args = interrupting_parse_args
    sys.argv = ["bnfold", "--help"]
    from bnfold.__main__ import main
    main()
""")


@pytest.mark.slow
def test_sigint_while_click_parses_is_not_aborted():
    child = subprocess.run([sys.executable, "-c", INTERRUPT_WHILE_PARSING], capture_output=True, text=True,
                           cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 130, child.stderr
    assert child.stderr == "bnfold: interrupted\n" and child.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2, 1.8])
def test_ctrl_c_during_a_fold_is_one_line_and_leaves_no_temporary_file(tmp_path, delay):
    import os
    import signal
    import time

    command = [sys.executable, "-m", "bnfold", str(ROOT / "models" / "zoo" / "resnet_style.onnx"), "-o",
               str(tmp_path / "out.onnx")]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(delay)
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = child.communicate(timeout=120)
    assert sorted(path.name for path in tmp_path.iterdir()) in ([], ["out.onnx"])  # no temporary file
    if child.returncode == 0:  # finished first
        return
    assert child.returncode == 130 and stderr == "bnfold: interrupted\n"


# A real SIGINT while ONNX Runtime's extension initializes, which pybind11 turns into an ImportError: bnfold would
# report "onnxruntime is not installed" (exit 2) for what was a Ctrl-C. `argv` is the command line after `bnfold`.
INTERRUPT_INSIDE_A_LIBRARY = textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from bnfold import runtime
    def import_onnxruntime():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, inside the "extension"
        except BaseException as error:
            raise ImportError("initialization failed") from error
    runtime.import_onnxruntime = import_onnxruntime
    sys.argv = ["bnfold", *sys.argv[1:]]
    from bnfold.__main__ import main
    main()
""")


@pytest.mark.slow
@pytest.mark.parametrize("several", [False, True])
def test_an_error_a_library_makes_of_ctrl_c_is_reported_as_the_interruption(tmp_path, several):
    """One model, and a batch folding in this process (-j 1): the run stops at once, exit 130, one line."""
    model = str(ROOT / "models" / "zoo" / "resnet_style.onnx")
    argv = [model, model, "-o", str(tmp_path / "out"), "-j", "1"] if several else [model, "-o",
                                                                                  str(tmp_path / "out.onnx")]
    child = subprocess.run([sys.executable, "-c", INTERRUPT_INSIDE_A_LIBRARY, *argv], capture_output=True,
                           text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 130, child.stderr
    assert child.stderr.endswith("bnfold: interrupted\n") and "not installed" not in child.stderr + child.stdout
    assert not any(path.is_file() for path in tmp_path.rglob("*"))  # nothing written, no temporary file
