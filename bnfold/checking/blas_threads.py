"""One BLAS thread while the float64 check runs: its matrix products are small (a weight by 16 probe positions), and
OpenBLAS's threads cost more to wake and join than they save: a ResNet-50's 53 pieces take ~0.25 s on one thread
and 3-4x that on two busy cores. Best effort: numpy built on OpenBLAS (the wheels' scipy-openblas) is found in the
process's loaded libraries and set through its own entry points; with any other BLAS nothing changes."""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

_NAMES = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
          ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
          ("openblas_get_num_threads", "openblas_set_num_threads"))
_found: Optional[Tuple] = None
_looked = False


def _openblas() -> Optional[Tuple]:
    """(get, set) of the OpenBLAS numpy loaded, or None."""
    global _found, _looked
    if _looked:
        return _found
    _looked = True
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()
                            and line.split()[-1].startswith("/")})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            if hasattr(library, get_name) and hasattr(library, set_name):
                _found = (getattr(library, get_name), getattr(library, set_name))
                return _found
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    functions = _openblas()
    if functions is None:
        yield
        return
    get, set_ = functions
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)
