"""What a release ships: the license it declares, one version, a Python floor the code honours, and a wheel that
installs into a fresh environment and folds a model from there."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import bnfold

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()
# MD5 of the Apache License 2.0 text as the Apache Software Foundation publishes it (LICENSE-2.0.txt).
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def pyproject_value(key: str) -> str:
    match = re.search(rf'^{key} = "([^"]*)"', PYPROJECT, re.M)
    assert match, f"pyproject.toml has no {key}"
    return match.group(1)


def test_license_file_is_the_declared_apache_2_0():
    assert pyproject_value("license") == "Apache-2.0"
    assert 'license-files = ["LICENSE"]' in PYPROJECT
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0_MD5


def test_version_is_written_once_and_in_the_changelog():
    assert 'dynamic = ["version"]' in PYPROJECT and 'version = { attr = "bnfold.__version__" }' in PYPROJECT
    assert re.fullmatch(r"\d+\.\d+\.\d+", bnfold.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(bnfold.__version__)}\b", changelog, re.M), "CHANGELOG.md lacks this version"


def test_code_parses_at_the_lowest_python_it_declares():
    floor = tuple(int(part) for part in re.fullmatch(r">=(\d+)\.(\d+)", pyproject_value("requires-python")).groups())
    for path in sorted((ROOT / "bnfold").rglob("*.py")):
        ast.parse(path.read_text(), str(path), feature_version=floor)


@pytest.mark.slow
def test_built_wheel_installs_into_a_fresh_venv_and_folds(tmp_path):
    """`python -m build` makes a wheel and an sdist; the wheel, installed into a new environment (its dependencies
    from this interpreter's site-packages, so nothing is downloaded), runs `bnfold MODEL -o OUT` from there."""
    pytest.importorskip("build", reason="pip install build (in the 'test' extra)")
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"bnfold-{bnfold.__version__}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"bnfold-{bnfold.__version__}.tar.gz"]

    environment = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(environment)
    python = environment / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])],
                               capture_output=True, text=True, env=env, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    work = tmp_path / "work"
    (work / "models" / "zoo").mkdir(parents=True)
    shutil.copy(ROOT / "models" / "zoo" / "resnet_style.onnx", work / "models" / "zoo")
    where = subprocess.run([str(python), "-c", "import bnfold; print(bnfold.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(environment), where.stdout + where.stderr
    folded = subprocess.run([str(environment / "bin" / "bnfold"), "models/zoo/resnet_style.onnx", "-o", "out.onnx"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert folded.returncode == 0, folded.stdout + folded.stderr
    assert "BatchNormalization: 6 of 6 folded" in folded.stdout and "PASSED" in folded.stdout
    assert folded.stdout.splitlines()[-1].startswith("wrote out.onnx (")
    import onnx

    assert "BatchNormalization" not in {node.op_type for node in onnx.load(work / "out.onnx").graph.node}
