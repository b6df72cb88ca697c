"""Graph package. On branch `local` only: this file stands in for the lead's, which replaces it at merge.

Until then this package shadows bnfold/graph.py, so that file's names are re-exported here for the rest of the code.
"""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

_spec = _importlib_util.spec_from_file_location("bnfold._graph_module", _Path(__file__).parent.parent / "graph.py")
_module = _importlib_util.module_from_spec(_spec)
_sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)
globals().update({name: value for name, value in vars(_module).items() if not name.startswith("__")})
