"""Batch workers: a worker killed as the OOM killer kills (SIGKILL) or past --timeout fails its own model only,
the others are folded, the table and JSON are written; a plain script without a __main__ guard can call
fold_files with workers; Ctrl-C ends a batch run with one line.

A model that is a FIFO makes a worker wait, deterministically: it opens the FIFO and blocks until the test opens
the other end (then the test knows which process holds it, through /proc) or forever (the timeout case)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import onnx
import pytest

import bnfold
from bnfold.workers import died
from models.fixtures import conv_bn, gemm_bn
from support import assert_same_outputs

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "mkfifo"),
                                reason="needs FIFOs and /proc")


def test_a_dead_worker_is_described():
    assert died(-9) == "worker killed by signal 9 (SIGKILL) (out of memory?); the other models went on"
    assert died(1).startswith("worker exited with code 1")


def models_and_fifo(tmp_path: Path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    onnx.save(conv_bn(seed=1), tmp_path / "in" / "a.onnx")
    onnx.save(gemm_bn(seed=2), tmp_path / "in" / "c.onnx")
    os.mkfifo(tmp_path / "in" / "b.onnx")
    return [tmp_path / "in" / name for name in ("a.onnx", "b.onnx", "c.onnx")]


def holder_of(path: Path) -> int:
    """The pid of the process (not this one) that has `path` open."""
    target = os.path.realpath(path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process has {path} open")


def kill_the_worker_reading(fifo: Path) -> None:
    with open(fifo, "wb"):  # returns once a worker has opened the FIFO to read the model
        os.kill(holder_of(fifo), signal.SIGKILL)


def temporaries(directory: Path) -> list:
    return [path.name for path in directory.rglob("*.tmp")]


@linux_only
@pytest.mark.slow
def test_a_killed_worker_fails_its_model_and_the_others_go_on(tmp_path):
    models = models_and_fifo(tmp_path)
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(result=bnfold.fold_files(models, tmp_path / "out", jobs=2)))
    run.start()
    kill_the_worker_reading(models[1])
    run.join(120)
    result = outcome["result"]
    by_name = {Path(model.source).name: model for model in result.models}
    killed = by_name["b.onnx"]
    assert killed.exit_code == 3 and "worker killed by signal 9" in killed.error and killed.report is None
    assert by_name["a.onnx"].verdict == by_name["c.onnx"].verdict == "PASSED"
    assert result.exit_code == 3 and result.failed == [killed]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.onnx", "c.onnx"]
    assert_same_outputs(conv_bn(seed=1), onnx.load(tmp_path / "out" / "a.onnx"))
    assert "b.onnx" in result.table() and json.loads(json.dumps(result.to_dict()))["models_failed"] == 1


@linux_only
@pytest.mark.slow
def test_the_command_writes_table_and_json_after_a_killed_worker(tmp_path):
    models = models_and_fifo(tmp_path)
    command = [sys.executable, "-m", "bnfold", *map(str, models), "-o", str(tmp_path / "out"), "-j", "2",
               "--json", str(tmp_path / "report.json")]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    kill_the_worker_reading(models[1])
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 3, stderr
    assert "worker killed by signal 9" in stderr and "Traceback" not in stderr and "BrokenProcessPool" not in stderr
    assert "3 models, 1 failed" in stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [model["exit_code"] for model in report["models"]] == [0, 3, 0]
    assert temporaries(tmp_path) == []


@linux_only
@pytest.mark.slow
def test_a_model_past_the_timeout_fails_alone(tmp_path):
    models = models_and_fifo(tmp_path)  # nothing ever writes to b.onnx: its worker waits forever
    result = bnfold.fold_files(models, tmp_path / "out", jobs=1, timeout=3)
    codes = {Path(model.source).name: (model.exit_code, model.error) for model in result.models}
    assert codes["a.onnx"] == (0, None) and codes["c.onnx"] == (0, None)
    assert codes["b.onnx"][0] == 3 and "timed out after 3 s" in codes["b.onnx"][1]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.onnx", "c.onnx"]


def test_timeout_must_be_positive(tmp_path):
    with pytest.raises(bnfold.UsageError, match="timeout"):
        bnfold.fold_files([tmp_path], tmp_path, timeout=0)


@pytest.mark.slow
def test_fold_files_with_workers_from_a_script_without_a_main_guard(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "folded").mkdir()
    for seed in range(3):
        onnx.save(conv_bn(seed=seed), tmp_path / "models" / f"m{seed}.onnx")
    script = tmp_path / "fold_all.py"
    script.write_text(textwrap.dedent("""
        import bnfold
        print("script body ran")
        result = bnfold.fold_files(["models"], "folded", jobs=2)
        print(result.exit_code, len(result.models))
    """))
    child = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "script body ran\n0 3\n"  # the workers never ran the script again
    assert sorted(path.name for path in (tmp_path / "folded").iterdir()) == ["m0.onnx", "m1.onnx", "m2.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5, 2.5])
def test_ctrl_c_during_a_batch_run_is_one_line(tmp_path, delay):
    (tmp_path / "out").mkdir()
    command = [sys.executable, "-m", "bnfold", str(ROOT / "models" / "zoo"), "-o", str(tmp_path / "out"), "-j", "2"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(delay)
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = child.communicate(timeout=120)
    if child.returncode == 0:  # finished before the signal
        return
    assert child.returncode == 130 and stderr == "bnfold: interrupted\n"
    assert temporaries(tmp_path) == []


def test_temporary_files_carry_the_writers_pid_and_a_killed_writers_are_removed(tmp_path, monkeypatch):
    from bnfold import saving

    names = []
    real_replace = os.replace

    def watching_replace(source, target):
        names.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watching_replace)
    saving.save_model(conv_bn(c_in=16, c_out=32, kernel=3), tmp_path / "out.onnx", external_data=True)
    pid = os.getpid()
    assert names[0].startswith(f".out.onnx.data.{pid}.") and names[1].startswith(f".out.onnx.{pid}.")
    left = [".out.onnx.4242.k3j.tmp", ".out.onnx.data.4242.x9.tmp", ".out.onnx.4243.k3j.tmp", ".other.4242.a.tmp"]
    for name in left:
        (tmp_path / name).write_bytes(b"partial")
    saving.remove_temporaries(tmp_path / "out.onnx", 4242)
    assert sorted(path.name for path in tmp_path.glob(".*.tmp")) == [".other.4242.a.tmp", ".out.onnx.4243.k3j.tmp"]


def test_timeout_with_one_model_says_how_to_bound_it(tmp_path):
    from click.testing import CliRunner

    from bnfold.cli import cli

    onnx.save(conv_bn(seed=1), tmp_path / "a.onnx")
    result = CliRunner().invoke(cli, [str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx"), "--timeout", "5"])
    assert result.exit_code == 2 and "--timeout bounds each model's worker" in result.output
    assert not (tmp_path / "b.onnx").exists()
