"""The process entry point: a finished command leaves without the interpreter's teardown, yet every line printed
reaches its reader, atexit handlers run, and the exit code is the command's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bnfold(*args, env=None, code=None):
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "bnfold", *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)


@pytest.mark.slow  # a real process: seconds, not milliseconds
@pytest.mark.parametrize("full_exit", ["", "1"], ids=["fast", "full"])
def test_output_is_complete_and_the_code_kept(full_exit, tmp_path):
    env = {"BNFOLD_FULL_EXIT": full_exit}
    listed = bnfold("rules", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.endswith("\n") and "forward" in listed.stdout and listed.stderr == ""
    missing = bnfold(str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "out.onnx"), env=env)
    assert missing.returncode == 2
    assert missing.stderr.startswith("bnfold: error: ") and missing.stderr.count("\n") == 1


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_atexit_handlers_run_before_the_process_ends(tmp_path):
    flag = tmp_path / "flag"
    code = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: open({str(flag)!r}, "w").write("ran"))
        sys.argv = ["bnfold", "rules"]
        from bnfold.__main__ import main
        main()
        raise AssertionError("main() returned")
    """)
    child = bnfold(code=code, env={"BNFOLD_FULL_EXIT": ""})
    assert child.returncode == 0, child.stderr
    assert flag.read_text() == "ran"


def test_in_process_calls_raise_system_exit():
    from bnfold.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(["rules"])
    assert raised.value.code == 0
