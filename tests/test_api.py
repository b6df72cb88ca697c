"""The public API surface: names resolve to what they say, whatever was imported first."""

import pytest
import subprocess
import sys


@pytest.mark.slow  # a real process: seconds, not milliseconds
def test_api_functions_stay_callable_after_every_submodule_is_imported():
    code = (
        "import bnfold.folding, bnfold.checking.end_to_end, bnfold.benchmark, bnfold.exporting, bnfold.testing, bnfold.cli\n"
        "import bnfold\n"
        "for name in ('fold', 'fold_file', 'verify', 'bench', 'export'):\n"
        "    assert callable(getattr(bnfold, name)) and not isinstance(getattr(bnfold, name), type(bnfold)), name\n"
        "assert bnfold.testing.assert_equivalent\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves():
    import bnfold

    for name in bnfold.__all__:
        assert getattr(bnfold, name) is not None, name
