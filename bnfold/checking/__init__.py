"""Proof that a fold is exact: compare (pure numpy metrics and tolerances), feeds (inputs, dynamic dims), run
(ONNX Runtime sessions), intermediates (the tensors two models share by meaning), end_to_end (bnfold.verify)."""
