"""Checks that a fold is exact: per fold (local) and per model (end to end)."""
