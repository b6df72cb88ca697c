"""A model read from a pipe (`/dev/stdin`, `<(...)`, a FIFO) is read whole into memory and folded, verified and
checked as a file is; an empty pipe says so."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import bnfold
from bnfold.cli import cli
from bnfold.errors import ModelLoadError
from models.fixtures import conv_bn
from support import assert_same_outputs

ROOT = Path(__file__).resolve().parent.parent
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def feed(fifo: Path, data: bytes) -> threading.Thread:
    """Write `data` into the FIFO once a reader opens it, as `<(cat model.onnx)` does."""
    def write():
        with open(fifo, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


@needs_fifo
def test_fold_file_reads_a_fifo_once_and_verifies_against_it(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    writer = feed(fifo, conv_bn(seed=4).SerializeToString())
    report = bnfold.fold_file(fifo, tmp_path / "folded.onnx")
    writer.join(10)
    assert report.written and report.folded_count == 1 and report.verification.passed
    assert_same_outputs(conv_bn(seed=4), onnx.load(tmp_path / "folded.onnx"))


@needs_fifo
def test_check_reads_a_fifo(tmp_path):
    fifo = tmp_path / "a.onnx"
    os.mkfifo(fifo)
    writer = feed(fifo, conv_bn(seed=5).SerializeToString())
    result = CliRunner().invoke(cli, ["check", str(fifo)])
    writer.join(10)
    assert result.exit_code == 1 and "1 BN foldable into weights" in result.output, result.output


@needs_fifo
def test_verify_reads_fifos(tmp_path):
    fifos = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    writers = []
    for fifo in fifos:
        os.mkfifo(fifo)
        writers.append(feed(fifo, conv_bn(seed=5).SerializeToString()))
    result = CliRunner().invoke(cli, ["verify", *map(str, fifos)])
    for writer in writers:
        writer.join(10)
    assert result.exit_code == 0 and "PASSED" in result.output, result.output


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_dev_stdin_in_a_real_process(tmp_path):
    child = subprocess.run([sys.executable, "-m", "bnfold", "/dev/stdin", "-o", str(tmp_path / "out.onnx")],
                           input=conv_bn(seed=6).SerializeToString(), capture_output=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert child.returncode == 0, child.stderr
    assert b"PASSED" in child.stdout
    assert_same_outputs(conv_bn(seed=6), onnx.load(tmp_path / "out.onnx"))


@needs_fifo
def test_an_empty_pipe_says_so(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    feed(fifo, b"")
    with pytest.raises(ModelLoadError, match="stream ended before any byte"):
        bnfold.load_model(fifo)
