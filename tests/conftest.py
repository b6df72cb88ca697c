import errno
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `support` (test helpers) and `models.fixtures` (model builders) import from the test run's own checkout.
for path in (ROOT / "tests", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture
def refuse_file_creation(monkeypatch):
    """Make creating a file fail with EACCES, as in a read-only directory (root ignores real permissions)."""
    real_open = os.open

    def refusing_open(name, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def pytest_ignore_collect(collection_path, config):
    """A module marked slow as a whole (`pytestmark = [... pytest.mark.slow ...]`: PyTorch exports, property and
    fuzz suites) is not even imported when the run deselects slow tests: importing PyTorch alone costs the fast
    loop about a second."""
    if collection_path.suffix != ".py" or "not slow" not in (config.getoption("markexpr") or ""):
        return None
    head = collection_path.read_text(errors="replace")
    return True if any(line.startswith("pytestmark") and "mark.slow" in line for line in head.splitlines()) else None
