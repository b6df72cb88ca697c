"""The extension points are complete entries: every rule implements the Rule protocol, every producer and every
look-through op its table entry, the engine validates what they read and names none of them, and the layers have
no import cycle. Adding a rule, a producer or a look-through op that misses a piece fails here, not mid-fold."""

import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

import onnx
import pytest

import bnfold
from bnfold.engine import VALIDATED_OPS
from bnfold.folding import FoldOptions
from bnfold.report import FoldReport
from bnfold.rules import RULE_NAMES, RULES
from bnfold.rules.base import Rule
from bnfold.rules.look_through import TABLE, LookThrough, View
from bnfold.rules.producers import PRODUCERS, Producer

PACKAGE = Path(bnfold.__file__).parent


def _overrides(entry, base, method) -> bool:
    return getattr(type(entry), method) is not getattr(base, method)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_every_rule_implements_the_protocol(rule):
    assert rule.name and rule.description and rule.candidates
    for method in ("match", "plan", "describe"):
        assert _overrides(rule, Rule, method), (rule.name, method)
    assert rule.report in {field.name for field in dataclasses.fields(FoldReport)}
    if rule.report != "decisions":
        assert _overrides(rule, Rule, "record"), rule.name  # it makes its own record per match
    if rule.opt_in:  # applied only when the option of its name asks for it, else its hint is the reason
        assert rule.hint and rule.name in {field.name for field in dataclasses.fields(FoldOptions)}
    assert set(rule.candidates) <= VALIDATED_OPS


def test_rule_and_skip_names_are_unique_and_all_skippable():
    names = [rule.name for rule in RULES] + [entry.skip_name for entry in PRODUCERS.values()]
    assert len(set(names)) == len(names) and tuple(names) == RULE_NAMES
    assert FoldOptions(skip=RULE_NAMES).skip == RULE_NAMES


@pytest.mark.parametrize("op", PRODUCERS)
def test_every_producer_entry_is_complete(op):
    entry = PRODUCERS[op]
    assert entry.op_type == op and entry.skip_name and onnx.defs.has(op)
    for method in ("output_rank", "input_rank", "input_dims", "output_channels", "input_channels", "forward",
                   "backward"):
        assert _overrides(entry, Producer, method), (op, method)
    assert op in VALIDATED_OPS


@pytest.mark.parametrize("op", TABLE)
def test_every_look_through_entry_is_complete(op):
    entry = TABLE[op]
    assert isinstance(entry, LookThrough) and entry.op_type == op and onnx.defs.has(op)
    assert op in VALIDATED_OPS
    if entry.removed:  # an affine step (op(x, c) with a per-channel constant, or -x): its own map, said
        assert _overrides(entry, LookThrough, "step") and (entry.scales or entry.shifts), op
    if isinstance(entry, View):
        assert _overrides(entry, View, "out_dims"), op
    # What it does to the channels and which maps cross it are said, not defaulted silently: an entry either
    # keeps channels where they are (the base behaviour, right for Identity, Cast and the affine steps) or says.
    keeps_channels = not _overrides(entry, LookThrough, "channels")
    assert keeps_channels == (op in ("Identity", "Cast") or entry.removed), op


def _string_literals(path: Path):
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_the_engine_names_no_rule_and_no_producer_skip_name():
    literals = _string_literals(PACKAGE / "engine.py")
    assert not set(RULE_NAMES) & literals


def _imports():
    """module -> bnfold modules it imports (function-level imports included)."""
    modules = {info.name for info in pkgutil.walk_packages([str(PACKAGE)], "bnfold.")} | {"bnfold"}
    edges = {}
    for name in modules:
        module = importlib.import_module(name)
        path = Path(module.__file__)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                for alias in node.names:
                    targets.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        edges[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return edges


def _cycles(edges):
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_through_the_fold_engine():
    """graph/ -> rules/ -> engine -> folding read top-down, and so do loading and saving (function-level imports
    count): no module of bnfold/ imports itself through others."""
    assert _cycles(_imports()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
