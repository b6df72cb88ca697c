"""The public API surface: names resolve to what they say, whatever was imported first."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest


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


def test_every_public_name_is_what_its_name_says_after_every_submodule_is_imported():
    """Each name in bnfold.__all__ resolves, even once every submodule is imported (a submodule named like a
    function would replace it as an attribute of the package), to what help(bnfold.NAME) should show a user: a
    documented function (lower case) or class (CapWords; an error is a BnfoldError) defined in bnfold, or, for
    `testing`, the helper module."""
    import bnfold
    from bnfold.errors import BnfoldError

    for module in pkgutil.walk_packages(bnfold.__path__, "bnfold."):
        if not module.name.endswith(".__main__"):  # running it is the command line
            importlib.import_module(module.name)
    for name in bnfold.__all__:
        value = getattr(bnfold, name)
        if name == "testing":
            assert inspect.ismodule(value) and value.__name__ == "bnfold.testing"
            continue
        assert inspect.getdoc(value), f"bnfold.{name} has no docstring"
        assert value.__module__.split(".")[0] == "bnfold", (name, value.__module__)
        if name[0].isupper():
            assert inspect.isclass(value), (name, value)
            if value.__module__ == "bnfold.errors":
                assert issubclass(value, BnfoldError), name
        else:
            assert inspect.isfunction(value), (name, value)
