"""Proof that a fold is exact, per fold and per model: local (each fold's piece run on its own), folds (the local
check as the fold engine uses it), compare (pure numpy metrics and tolerances), feeds (inputs, dynamic dims), run
(ONNX Runtime sessions), intermediates (the tensors two models share by meaning), end_to_end (bnfold.verify)."""
