"""Shared name parsing: layer indices, depth, blocks, regex groups, tensor labels."""

from __future__ import annotations

import numpy as np
import pytest

from mergesweep.errors import ConfigError, SpaceError
from mergesweep.spaces.layers import (
    assign_groups,
    group_pairs,
    index_labels,
    parse_layers,
    tensor_labels,
)


def test_vit_layout_parses_six_layers_with_embed_and_final(layout):
    lm = parse_layers(layout.names)
    assert lm.layers == (0, 1, 2, 3, 4, 5)
    assert lm.num_layers == 6
    assert lm.blocks[:4] == ("embed",) * 4
    assert lm.blocks[4:20] == ("layer0",) * 16
    assert lm.blocks[84:100] == ("layer5",) * 16
    assert lm.blocks[100:] == ("final", "final")
    assert lm.index[:5] == (None, None, None, None, 0)
    # embeddings sit at depth 0, the final norm at depth L−1 = 5
    assert lm.depth[:4].tolist() == [0, 0, 0, 0]
    assert lm.depth[100:].tolist() == [5, 5]
    assert lm.depth[4 + 16 * 3] == 3
    np.testing.assert_allclose(lm.relative_depth()[[0, 4, 4 + 16 * 2, 99, 101]], [0, 0, 0.4, 1, 1])


def test_layer_indices_sort_numerically_and_gaps_do_not_count():
    names = ("emb.w", "h.10.w", "h.2.w", "h.0.w", "head.w")
    lm = parse_layers(names)
    assert lm.layers == (0, 2, 10)  # 10 after 2: numbers, not strings
    assert lm.depth.tolist() == [0, 2, 1, 0, 2]
    assert lm.blocks == ("embed", "layer10", "layer2", "layer0", "final")


def test_non_layer_tensors_between_layers_form_other_at_the_preceding_depth():
    names = (
        "shared.weight",
        "encoder.block.0.w",
        "encoder.block.1.w",
        "encoder.final_layer_norm.weight",
        "decoder.block.2.w",
        "lm_head.weight",
    )
    lm = parse_layers(names)
    assert lm.blocks == ("embed", "layer0", "layer1", "other", "layer2", "final")
    assert lm.depth.tolist() == [0, 0, 1, 1, 2, 2]


def test_one_layer_gives_relative_depth_zero():
    lm = parse_layers(("a.w", "b.0.w", "c.w"))
    assert lm.num_layers == 1
    assert lm.relative_depth().tolist() == [0.0, 0.0, 0.0]


def test_custom_regex_uses_group_one(layout):
    lm = parse_layers(layout.names, r"layers\.(\d+)")
    assert lm.layers == tuple(range(6))


@pytest.mark.parametrize(
    ("pattern", "error", "message"),
    [
        ("layers.(\\d+", ConfigError, r"space\.options\.layer_regex: bad regex"),
        (r"\.\d+\.", ConfigError, r"space\.options\.layer_regex: .* needs a capture group"),
        (r"\.(\w+)\.", ConfigError, r"captures 'embeddings' in .*not a layer number"),
        (r"\.blocks\.(\d+)\.", SpaceError, r"space\.options\.layer_regex: .* no tensor name"),
        (3, ConfigError, r"space\.options\.layer_regex: expected a regular expression"),
    ],
)
def test_bad_layer_regex_names_the_option(layout, pattern, error, message):
    with pytest.raises(error, match=message):
        parse_layers(layout.names, pattern)


def test_groups_first_match_wins_and_rest_collects_the_others(layout):
    labels = assign_groups(layout.names, {"q": r"q_proj", "attn": r"\.attention\."})
    assert labels.count("q") == 2 * 6
    assert labels.count("attn") == 6 * 6
    assert labels.count("rest") == 102 - 48
    assert labels[4:6] == ("q", "q")
    assert labels[6] == "attn"


def test_group_pairs_accept_a_mapping_or_pairs_in_order():
    assert group_pairs({"b": "x", "a": "y"}) == [("b", "x"), ("a", "y")]
    assert group_pairs([["b", "x"], ["a", "y"]]) == [("b", "x"), ("a", "y")]


@pytest.mark.parametrize(
    ("groups", "error", "message"),
    [
        ({"conv": r"\.conv\."}, SpaceError, r"space\.options\.groups\.conv: .* \(no match\)"),
        (
            {"attn": r"\.attention\.", "q": r"q_proj"},
            SpaceError,
            r"space\.options\.groups\.q: .*taken by an earlier group",
        ),
        ({"attn": "attention(["}, ConfigError, r"space\.options\.groups\.attn: bad regex"),
        ({"rest": "mlp"}, ConfigError, r"space\.options\.groups\.rest: 'rest' is reserved"),
        ({}, ConfigError, r"space\.options\.groups: expected a non-empty mapping"),
        ("mlp", ConfigError, r"space\.options\.groups: expected a non-empty mapping"),
        ([["a", "x"], ["a", "y"]], ConfigError, r"space\.options\.groups\.a: group named twice"),
    ],
)
def test_bad_groups_name_the_group(layout, groups, error, message):
    with pytest.raises(error, match=message):
        assign_groups(layout.names, groups)


def test_index_labels_keeps_first_appearance_order():
    order, idx = index_labels(["b", "a", "b", "c"])
    assert order == ["b", "a", "c"]
    assert idx.tolist() == [0, 1, 0, 2]


def test_tensor_labels_are_unique_short_and_drop_the_shared_prefix(layout):
    labels = tensor_labels(layout.names)
    assert len(set(labels)) == 102
    assert labels[0] == "t000.embeddings.cls_token"
    assert labels[4] == "t004.layers.0.attention.q_proj.weight"
    assert labels[101] == "t101.layernorm.bias"
    long = tensor_labels(("m." + "x" * 30 + ".block.0.attention.query.weight", "m.y"))
    assert long[0] == "t0.block.0.attention.query.weight"
    assert tensor_labels(("only.one",)) == ["t0.only.one"]  # nothing shared with others
