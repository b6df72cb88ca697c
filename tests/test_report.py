"""bnfold.report: a reason several kept BNs share (up to the names it quotes) is said once with the count and an
example in the default text; -v lists each; every distinct reason keeps its own line."""

import numpy as np
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.cli import cli
from bnfold.report import BnDecision, kept_lines, reason_kind
from models import fixtures
from support import fold_and_compare


def densenet_stack(layers: int = 6, growth: int = 4, seed: int = 0):
    """DenseNet layers: BN -> Relu -> Conv 3x3 on the concatenation of every earlier output. No BN can fold: the
    first reads the image, the others a Concat, and Relu stands between each BN and its Conv."""
    rng = np.random.default_rng(seed)
    nodes, initializers, x, channels = [], [], "x", 3
    for layer in range(layers):
        initializers += fixtures.bn_parameters(channels, rng, f"bn{layer}")
        initializers.append(numpy_helper.from_array(
            rng.normal(0, 0.3, (growth, channels, 3, 3)).astype(np.float32), f"w{layer}"))
        nodes += [fixtures.bn_node(x, f"n{layer}", f"bn{layer}"),
                  helper.make_node("Relu", [f"n{layer}"], [f"r{layer}"], name=f"relu{layer}"),
                  helper.make_node("Conv", [f"r{layer}", f"w{layer}"], [f"c{layer}"], name=f"conv{layer}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Concat", [x, f"c{layer}"], [f"cat{layer}"], name=f"concat{layer}", axis=1)]
        x, channels = f"cat{layer}", channels + growth
    return fixtures.make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 8, 8])], initializers)


def kept(reason: str, node: str) -> BnDecision:
    return BnDecision(node=node, output=f"{node}_out", graph="main", folded=False, reason=reason)


def test_the_names_a_reason_quotes_are_what_tells_two_bns_apart():
    assert reason_kind("input 'a' comes from Concat node 'b'") == reason_kind("input 'c' comes from Concat node 'd'")
    assert reason_kind("input \"it's\" comes from a graph input") == reason_kind("input 'x' comes from a graph input")
    # An apostrophe inside a word opens no name; numbers are not names.
    assert reason_kind("the BN's var + epsilon <= 0 at channel 1") != reason_kind(
        "the BN's var + epsilon <= 0 at channel 2")
    assert reason_kind("input 'a' comes from Concat node 'b'") != reason_kind("input 'a' comes from no node")


def test_kept_lines_group_shared_reasons_where_the_first_stands_and_keep_each_distinct_one():
    items = [kept("input 'x' comes from a graph input", "first"),
             kept("'s1' is an initializer that is also a graph input", "a"),
             kept("var + epsilon <= 0 at channel 3", "b"),
             kept("'s2' is an initializer that is also a graph input", "c"),
             kept("'s3' is an initializer that is also a graph input", "d")]
    assert kept_lines(items, "BN", verbose=False) == [
        "  kept   first -> 'first_out': input 'x' comes from a graph input",
        "  kept   3 BN for the same reason (-v lists each), e.g. a -> 'a_out': 's1' is an initializer that is also a "
        "graph input",
        "  kept   b -> 'b_out': var + epsilon <= 0 at channel 3"]
    assert kept_lines(items, "BN", verbose=True) == [f"  kept   {item.label}: {item.reason}" for item in items]


def test_nested_concat_densenet_says_each_reason_once_and_v_lists_every_bn(tmp_path):
    model = densenet_stack(layers=6)
    folded, report = fold_and_compare(model, expect_folded=0)
    assert report.kept_count == 6
    kinds = {reason_kind(d.reason) for d in report.kept}
    assert len(kinds) == 3  # the image; a Concat of the image; a Concat of a Concat (4 BNs)
    text = report.render()
    kept_text = [line for line in text.splitlines() if line.startswith("  kept")]
    assert len(kept_text) == 3
    assert "  kept   4 BN for the same reason (-v lists each), e.g. bn2 -> 'n2': " in text
    # Every distinct reason is still there, in full, with an example BN.
    for decision in (report.kept[0], report.kept[1], report.kept[2]):
        assert f"{decision.label}: {decision.reason}" in text
    verbose = report.render(verbose=True)
    assert all(f"  kept   {d.label}: {d.reason}" in verbose for d in report.kept)
    assert "for the same reason" not in verbose

    path = tmp_path / "densenet.onnx"
    bnfold.save_model(model, path)
    default = CliRunner().invoke(cli, [str(path), "--dry-run", "--no-verify"])
    assert default.exit_code == 0 and default.output.count("  kept ") == 3
    listed = CliRunner().invoke(cli, [str(path), "--dry-run", "--no-verify", "-v"])
    assert listed.output.count("  kept ") == 6 and all(d.label in listed.output for d in report.kept)


def test_check_groups_shared_reasons_too_and_v_lists_each(tmp_path):
    path = tmp_path / "densenet.onnx"
    bnfold.save_model(densenet_stack(layers=5), path)
    # Without --standalone's rule, nothing could replace these BNs: each is kept with its reason.
    default = CliRunner().invoke(cli, ["check", str(path), "--skip", "standalone"])
    assert default.exit_code == 0, default.output
    assert default.output.count("  kept ") == 3 and "3 BN for the same reason (-v lists each)" in default.output
    listed = CliRunner().invoke(cli, ["check", str(path), "--skip", "standalone", "-v"])
    assert listed.output.count("  kept ") == 5 and "for the same reason" not in listed.output
    assert bnfold.check(path, skip="standalone").to_dict()["bn_kept"] == 5


def test_initializer_input_hint_on_every_bn_is_said_once():
    """The CenterFace case with --keep-input-initializers: one hint per BN, differing only in the tensor named."""
    _, report = bnfold.fold(fixtures.exporter_initializer_inputs(), keep_input_initializers=True)
    kept_text = [line for line in report.render().splitlines() if line.startswith("  kept")]
    assert len(kept_text) == 1 and kept_text[0].startswith("  kept   4 BN for the same reason (-v lists each), e.g. ")
    assert "is an initializer that is also a graph input" in kept_text[0]
