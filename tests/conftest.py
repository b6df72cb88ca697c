import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `support` (test helpers) and `models.fixtures` (model builders) import from the test run's own checkout.
for path in (ROOT / "tests", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
