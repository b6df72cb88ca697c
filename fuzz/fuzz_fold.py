"""Coverage-guided fuzzing of the loader and the fold with atheris, for long local runs (CI runs tests/test_fuzz.py).

    pip install atheris
    python fuzz/fuzz_fold.py -max_total_time=600 [CORPUS_DIR ...]

Starts from the fixtures' models (models/fixtures.py SHIPPED), the fixed entries of tests/fuzz_corpus/ and any
corpus directories given; libFuzzer keeps the
inputs that reach new code in the first directory (a temporary one when none is given). An input that makes
bnfold raise anything but a BnfoldError is a crash: libFuzzer stops and writes it to ./crash-<hash>; add it to
tests/fuzz_corpus/ (see its README) so every test run replays it.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    import bnfold
    from bnfold import loading
    from bnfold.errors import BnfoldError

from models.fixtures import SHIPPED  # noqa: E402 - after the instrumented imports


def fold_bytes(data: bytes) -> None:
    """Parse, check and fold; the checker's verdict is ignored so unchecked models reach the fold as well."""
    warnings.simplefilter("ignore")
    try:
        model = loading.parse_model_bytes(data)
    except BnfoldError:
        return
    try:
        loading.check_model(model)
    except BnfoldError:
        pass
    try:
        bnfold.fold(model)
    except BnfoldError:
        pass


def main() -> None:
    corpus_dirs = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    options = [arg for arg in sys.argv[1:] if arg.startswith("-")]
    seeds = Path(tempfile.mkdtemp(prefix="bnfold-seeds-"))
    for name, build in SHIPPED.items():
        (seeds / f"{name}.onnx").write_bytes(build().SerializeToString())
    for path in sorted((ROOT / "tests" / "fuzz_corpus").glob("*.bin")):
        if not path.name.startswith("engine-"):  # open bugs would stop the run at once
            (seeds / path.name).write_bytes(path.read_bytes())
    work = corpus_dirs or [tempfile.mkdtemp(prefix="bnfold-fuzz-")]
    atheris.Setup([sys.argv[0], *options, *work, str(seeds)], fold_bytes)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
