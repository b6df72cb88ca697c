"""ONNX Runtime sessions: sources, optimization levels, providers."""

import numpy as np
import pytest

from bnfold import tensors
from bnfold.errors import ProviderError, UsageError
from bnfold.runtime import make_session, run
from models import fixtures


def test_a_model_past_the_protobuf_limit_runs_through_a_temporary_external_data_file(monkeypatch):
    """The 2 GiB limit is lowered so a small model stands in for a huge one (a real one does not fit CI)."""
    model = fixtures.conv_bn()
    x = np.ones((1, 4, 9, 9), np.float32)
    expected = run(make_session(model), {"x": x})["y"]
    monkeypatch.setattr(tensors, "PROTOBUF_LIMIT", 1024)
    assert tensors.exceeds_protobuf_limit(model)
    np.testing.assert_array_equal(run(make_session(model), {"x": x})["y"], expected)


def test_unknown_optimization_level_and_missing_provider_are_typed_errors():
    with pytest.raises(UsageError, match="unknown ORT optimization level"):
        make_session(fixtures.conv_bn(), opt_level="max")
    with pytest.raises(ProviderError, match="not available"):
        make_session(fixtures.conv_bn(), providers=["NoSuchExecutionProvider"])
