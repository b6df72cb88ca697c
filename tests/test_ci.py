"""The CI integrations the README documents: the pre-commit hook (run through the real `pre-commit try-repo`)
and the GitHub Actions recipe (its shell commands, run as written)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from models.fixtures import conv_bn, multi_consumer_conv

ROOT = Path(__file__).resolve().parent.parent


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
def test_pre_commit_hook_with_pre_commit_try_repo(tmp_path):
    """Installs bnfold from this checkout into pre-commit's own environment (needs the package index)."""
    if shutil.which("pre-commit") is None:
        pytest.skip("pre-commit is not installed (pip install pre-commit, or the 'test' extra)")
    repo = tmp_path / "user_repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    onnx.save(multi_consumer_conv(), repo / "kept_only.onnx")
    onnx.save(conv_bn(), repo / "foldable.onnx")
    (repo / "README.txt").write_text("not a model: the hook must not see it")
    git("add", ".", cwd=repo)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre_commit_home")}
    env.pop("PYTHONPATH", None)

    def try_repo(*files):
        return subprocess.run(["pre-commit", "try-repo", str(ROOT), "bnfold-check", "--files", *files],
                              cwd=repo, env=env, capture_output=True, text=True)

    failed = try_repo("foldable.onnx", "kept_only.onnx", "README.txt")
    if "Could not find a version" in failed.stdout or "Failed to establish a new connection" in failed.stdout:
        pytest.skip("pre-commit could not install bnfold's dependencies (no package index)")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "foldable.onnx: 1 BN foldable into weights" in failed.stdout and "FAIL" in failed.stdout
    assert "kept_only.onnx: 0 BN foldable into weights, 0 only as Mul+Add, 1 kept: ok" in failed.stdout
    assert "README.txt" not in failed.stdout
    passed = try_repo("kept_only.onnx")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Passed" in passed.stdout


def readme_recipe() -> list:
    """The `run:` commands of the README's GitHub Actions recipe, without the install line."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ci-recipe -->\n```yaml\n(.*?)```", text, re.S)
    assert block, "README.md lost its GitHub Actions recipe"
    run = re.search(r"run: \|\n((?:\s{8,}.*\n)+)", block.group(1))
    commands = [line.strip() for line in run.group(1).splitlines() if line.strip()]
    assert commands[0].startswith("pip install")
    return commands[1:]


@pytest.mark.slow
def test_github_actions_recipe_commands(tmp_path):
    work = tmp_path / "checkout"
    (work / "models" / "vision").mkdir(parents=True)
    shutil.copy(ROOT / "models" / "zoo" / "resnet_style.onnx", work / "models" / "vision")
    shutil.copy(ROOT / "models" / "zoo" / "mlp_bn1d.onnx", work / "models")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bnfold").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bnfold "$@"\n')
    (bin_dir / "bnfold").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    for command in readme_recipe():
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    report = json.loads((work / "bnfold-report.json").read_text())
    assert report["exit_code"] == 0 and {m["verdict"] for m in report["models"]} == {"PASSED"}
    assert (work / "folded" / "vision" / "resnet_style.onnx").is_file()
    check = json.loads((work / "bnfold-check.json").read_text())
    assert check["exit_code"] == 0 and [m["bn_foldable"] for m in check["models"]] == [0, 0]
