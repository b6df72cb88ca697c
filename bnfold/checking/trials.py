"""The trial runs that choose what an end-to-end check feeds: sizes for open dims, and inputs that give signal.

Open dims try checking.feeds' TRIAL_SIZES until the reference runs, then its EVIDENCE_SIZES while an output carries
no signal (checking.evidence), then image-like inputs (random blocks) at the sizes that ran; the try where the
fewest outputs lack signal is used. `bnfold bench` times models on the same choice (choose_inputs).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..errors import InvalidModelError, UnresolvedShapeError
from .pair import ModelPair


def choose_inputs(model, specs, plan, provided, seed: int, label: str = "model"):
    """(feeds, notes): the inputs the check would choose for `model` where `plan` (checking.feeds.plan_shapes) leaves
    dims open, found by running it as the check's first run does; for `bnfold bench`, which times on them."""
    from .intermediates import element_types
    from .noise import flowing_dtypes

    types = element_types(model)
    check = ModelPair(model, model, label, model, model, label, "disable", None, None,
                      [value.name for value in model.graph.output], flowing_dtypes(model, types), types)
    _shapes, notes, feeds, _evidence, _texture = first_run(check, specs, plan, provided, seed, [])
    return feeds, notes


def first_run(check: ModelPair, specs, plan, provided, seed, branches):
    """Find shapes the reference runs with, trying sizes for open dims, then larger ones and image-like inputs
    (checking.feeds) while an output carries no signal; return the shapes, notes, the feeds, each output's evidence
    (checking.evidence) and the input texture, for the first try where the fewest outputs lack signal."""
    from .evidence import lacking, output_evidence
    from .feeds import EVIDENCE_SIZES, TEXTURES, TRIAL_SIZES, branch_variants, make_feeds

    runner = check.runner("reference")
    failures, ran = [], []
    best = None
    for texture in TEXTURES:
        # White noise: every trial size until one runs, then the larger ones; blocks: the sizes that ran.
        sizes = TRIAL_SIZES + EVIDENCE_SIZES if texture == TEXTURES[0] else tuple(ran)
        for shapes, chosen in plan.candidates(sizes):
            size = next(iter(chosen.values()), None)
            if ran and texture == TEXTURES[0] and size not in EVIDENCE_SIZES:
                continue  # a size ran: only the larger ones can add signal
            feeds = branch_variants(make_feeds(specs, shapes, provided, seed, texture), branches)[0]
            try:
                values = runner.run(feeds, quiet=bool(plan.groups))
            except InvalidModelError as error:
                failures.append((size, str(error)))
                continue
            ran.append(size)
            outputs = {name: values[name] for name in check.output_names if name in values}
            evidence = output_evidence(outputs, check.atol, check.rtol, check.flowing)
            del values, outputs
            if best is None or lacking(evidence) < lacking(best[3]):
                best = (shapes, chosen, feeds, evidence, texture)
            if not lacking(evidence):
                break
        if best is None or not lacking(best[3]):
            break
    if best is None:
        give = " ".join(f"--input-shape {name}:" + "x".join(_placeholder(d) for d in dims)
                        for name, dims in plan.dims.items() if any(isinstance(d, str) for d in dims))
        last_error = failures[-1][1] if failures else ""
        raise UnresolvedShapeError(
            f"no size for the dynamic dim(s) {', '.join(plan.groups)} lets the original model run (tried "
            f"{', '.join(str(size) for size in TRIAL_SIZES + EVIDENCE_SIZES)}; last error: {last_error}); "
            f"give the shapes, e.g. {give}"
        )
    shapes, chosen, feeds, evidence, texture = best
    notes = list(plan.notes)
    size = next(iter(chosen.values()))
    smaller = sorted({str(tried) for tried, _ in failures if tried < ran[0]}, key=int)
    tried = f" ({', '.join(smaller)} did not run)" if smaller else ""
    larger = " (an output carried no signal at the first size that ran)" if size != ran[0] else ""
    notes.append("dynamic dims chosen: " + ", ".join(f"{group}={size}" for group in chosen) + tried + larger
                 + "; --input-shape sets them")
    if texture != TEXTURES[0]:
        notes.append(f"image inputs: random {texture} (white noise left an output with no signal)")
    return shapes, notes, feeds, evidence, texture


def _placeholder(dim) -> str:
    """A dim as --input-shape wants it in an example: its size, its symbolic name, or N for an unnamed one."""
    if not isinstance(dim, str):
        return str(dim)
    return "N" if "[" in dim else dim


def feed_sets(specs, shapes, provided, seed, runs, branches, first_feeds, texture) -> List[Dict[str, np.ndarray]]:
    """Every feed set the check runs: `runs` seeded draws, each with every If-deciding input both ways."""
    from .feeds import branch_variants, make_feeds

    feed_sets = []
    for run_index in range(runs):
        base = first_feeds if run_index == 0 else make_feeds(specs, shapes, provided, seed + run_index, texture)
        variants = branch_variants(base, branches)
        feed_sets.extend([first_feeds, *variants[1:]] if run_index == 0 else variants)
    return feed_sets


