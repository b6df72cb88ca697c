"""Helpers for a user's own test suite: `assert_equivalent(original, folded)` in pytest."""

from __future__ import annotations

from .checking.end_to_end import verify


def assert_equivalent(model_a, model_b, **verify_kwargs):
    """Assert two models (paths or ModelProtos) give the same outputs within tolerance; return the VerifyResult.

    Takes bnfold.verify's keyword arguments (atol, rtol, input_shapes, inputs, runs, seed, ...). On a
    difference it raises AssertionError carrying the per-output table, so pytest shows which output broke.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    result = verify(model_a, model_b, **verify_kwargs)
    if not result.passed:
        raise AssertionError("models are not numerically equivalent\n" + result.summary())
    return result
