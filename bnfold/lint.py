"""`bnfold check`: what a fold would do to a model, without writing it and without ONNX Runtime.

The model is folded in memory (as with --no-verify) and each BatchNormalization sorted into: foldable into
weights, foldable only as a standalone Mul+Add, or kept (with the reason). Other normalization layers are listed
too, with why no fold applies to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, List, Optional

from .errors import EXIT_OK, EXIT_VERIFY_FAILED, ArgumentTypeError
from .options import FoldOptions, as_count, as_paths
from .report import kept_lines


# Why a normalization other than BatchNormalization cannot become constants in a neighbour's weights.
PER_SAMPLE_NORMALIZATIONS = {
    "LayerNormalization": "normalizes each sample with the mean and variance of its own features, computed at run "
                          "time: there are no fixed statistics to fold into weights",
    "GroupNormalization": "normalizes each sample with the statistics of its own channel groups, computed at run "
                          "time: there are no fixed statistics to fold into weights",
    "InstanceNormalization": "normalizes each sample and channel with statistics over its own spatial positions, "
                             "computed at run time: there are no fixed statistics to fold into weights",
}


@dataclass
class OtherNormalization:
    op_type: str
    node: str
    graph: str
    why: str


@dataclass
class ModelCheck:
    """One model's check: BN decisions sorted by outcome, other normalizations, and a verdict against limits."""

    source: str
    foldable: list = field(default_factory=list)     # BnDecision folded into a neighbour's weights
    standalone: list = field(default_factory=list)   # BnDecision that would only become Mul+Add
    kept: list = field(default_factory=list)         # BnDecision that must stay, each with its reason
    other_normalizations: List[OtherNormalization] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # what the model made the fold do, said once (FoldReport's)
    violations: List[str] = field(default_factory=list)
    error: Optional[str] = None
    error_code: int = EXIT_OK

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error_code
        return EXIT_VERIFY_FAILED if self.violations else EXIT_OK

    def apply_limits(self, max_foldable: Optional[int] = 0, max_standalone: Optional[int] = None,
                     max_kept: Optional[int] = None) -> "ModelCheck":
        """Record a violation for each count above its limit (None: no limit)."""
        limits = (("foldable into weights", self.foldable, as_count(max_foldable, "max_foldable", optional=True),
                   "--max-foldable"),
                  ("foldable only as Mul+Add", self.standalone,
                   as_count(max_standalone, "max_standalone", optional=True), "--max-standalone"),
                  ("kept", self.kept, as_count(max_kept, "max_kept", optional=True), "--max-kept"))
        self.violations = [f"{len(items)} BN {what} > {option} {limit}" for what, items, limit, option in limits
                           if limit is not None and len(items) > limit]
        return self

    def render(self, verbose: bool = False) -> str:
        """The verdict, each BN by outcome and the other normalizations; a reason several kept BNs share is said
        once with the count unless verbose."""
        if self.error is not None:
            return self.error if self.error.startswith(self.source) else f"{self.source}: {self.error}"
        verdict = "FAIL (" + "; ".join(self.violations) + ")" if self.violations else "ok"
        lines = [f"{self.source}: {len(self.foldable)} BN foldable into weights, {len(self.standalone)} only as "
                 f"Mul+Add, {len(self.kept)} kept: {verdict}"]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  foldable  {d.label} into {d.into_op} {d.into} [{d.rule}]" for d in self.foldable]
        lines += [f"  mul+add   {d.label} (nothing to fold into; --standalone)" for d in self.standalone]
        lines += kept_lines(self.kept, "BN", verbose, prefix="  kept      ")
        lines += [f"  {o.op_type} {o.node}{'' if o.graph == 'main' else ' in ' + o.graph}: not foldable, it {o.why}"
                  for o in self.other_normalizations]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "exit_code": self.exit_code, "error": self.error,
                "violations": list(self.violations),
                "bn_foldable": len(self.foldable), "bn_standalone": len(self.standalone), "bn_kept": len(self.kept),
                "foldable": [asdict(d) for d in self.foldable], "standalone": [asdict(d) for d in self.standalone],
                "kept": [asdict(d) for d in self.kept],
                "other_normalizations": [asdict(o) for o in self.other_normalizations], "notes": list(self.notes)}


def check(path, *, check_model: bool = True, fold_input_initializers: bool = False,
          keep_input_initializers: bool = False, skip=(), inline_functions: bool = False,
          max_foldable: Optional[int] = 0, max_standalone: Optional[int] = None,
          max_kept: Optional[int] = None, options: Optional[FoldOptions] = None) -> ModelCheck:
    """Fold the model at `path` in memory (nothing written, ONNX Runtime not imported) and sort its BNs.

    Raises bnfold's typed errors for a model that cannot be read. The limits (None: unlimited) set
    `violations` and `exit_code` (1 when a count is above its limit). The BNs are sorted as `bnfold` with the
    same options folds them: those reading initializers listed as graph inputs of an old PyTorch export count as
    foldable unless keep_input_initializers. The fold options may instead come made, as a FoldOptions (`options`;
    its local_check is not used).
    """
    from .folding import fold_model
    from .loading import holding, load_checked_model

    source = as_paths(path, "path")
    if len(source) != 1:
        raise ArgumentTypeError("path", "expected one model path; call check once per model")
    fold_options = replace(FoldOptions.given_or_made(options, {
        "fold_input_initializers": fold_input_initializers, "keep_input_initializers": keep_input_initializers,
        "skip": skip, "inline_functions": inline_functions}), local_check=False)
    # Weights stay in the file (bnfold.tensor_store): read only where a fold needs them, never all in memory at once.
    with holding(source[0]) as held:
        model = load_checked_model(source[0], check=check_model, held=held)
        others = list(_other_normalizations(model))
        _, report = fold_model(model, fold_options, inplace=True)
    result = ModelCheck(source=source[0], other_normalizations=others, notes=report.model_lines())
    for decision in report.decisions:
        if decision.folded:
            result.foldable.append(decision)  # what `bnfold MODEL -o OUT` folds by default, merges included
        elif decision.standalone_possible:
            result.standalone.append(decision)
        else:
            result.kept.append(decision)
    return result.apply_limits(max_foldable, max_standalone, max_kept)


def _other_normalizations(model) -> Iterator[OtherNormalization]:
    from .graph import node_label, subgraphs

    def visit(nodes, graph: str) -> Iterator[OtherNormalization]:
        for node in nodes:
            if node.op_type in PER_SAMPLE_NORMALIZATIONS:
                yield OtherNormalization(node.op_type, node_label(node), graph, PER_SAMPLE_NORMALIZATIONS[node.op_type])
            for sub in subgraphs(node):
                yield from visit(sub.node, f"{node_label(node)}/{sub.name or 'body'}")

    yield from visit(model.graph.node, "main")
    for function in model.functions:
        yield from visit(function.node, f"function {function.domain}.{function.name}")
