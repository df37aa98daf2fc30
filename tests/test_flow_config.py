"""Config expansion and node identity: every rule of API.md section 3 "Expansion" and "Identity".

Expansion is checked on hand-written cases, on fluidml's published cases, and, with hypothesis,
against a naive reference that implements the rule literally (product of every list's index at
every depth, then drop the points where two present lists of one group disagree): the obvious
but exponential method, which must give the same configs in the same order.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

import aioflows as af
from aioflows.errors import FlowError
from aioflows.flow import config as config_module
from aioflows.flow.config import expand_config
from aioflows.flow.identity import canonical_json, config_hash, strip_ignored

# -- expansion: constants, product, order -----------------------------------------------------


def test_expand_config_is_exported() -> None:
    assert af.expand_config is expand_config


def test_none_is_one_empty_config() -> None:
    assert expand_config(None) == [{}]
    assert expand_config({}) == [{}]


def test_scalars_tuples_and_other_values_are_constants() -> None:
    marker = object()
    config = {"a": 1, "b": "x", "c": (1, [2, 3]), "d": None, "e": 2.5, "f": marker, "g": {1, 2}}
    assert expand_config(config) == [config]
    assert expand_config(config)[0]["f"] is marker


def test_product_count_and_order_first_axis_slowest() -> None:
    out = expand_config({"a": [1, 2], "k": "const", "b": ["x", "y", "z"]})
    assert out == [
        {"a": a, "k": "const", "b": b} for a, b in itertools.product([1, 2], ["x", "y", "z"])
    ]


def test_nested_dict_axes_are_ordered_depth_first_by_key_order() -> None:
    out = expand_config({"a": [1, 2], "m": {"b": [3, 4], "n": {"c": [5, 6]}}, "d": [7, 8]})
    expected = [
        {"a": a, "m": {"b": b, "n": {"c": c}}, "d": d}
        for a, b, c, d in itertools.product([1, 2], [3, 4], [5, 6], [7, 8])
    ]
    assert out == expected


def test_output_keeps_input_key_order() -> None:
    out = expand_config({"z": [1, 2], "a": 0, "m": {"y": 1, "b": [3, 4]}})
    for config in out:
        assert list(config) == ["z", "a", "m"]
        assert list(config["m"]) == ["y", "b"]


# -- expansion: literal lists and dicts inside lists ----------------------------------------------


def test_a_list_holding_one_list_is_a_literal_list_value() -> None:
    assert expand_config({"x": [[1, 2]]}) == [{"x": [1, 2]}]
    assert expand_config({"x": [[]]}) == [{"x": []}]


def test_list_elements_of_alternatives_are_literal_values() -> None:
    assert expand_config({"x": [[1, 2], [3]]}) == [{"x": [1, 2]}, {"x": [3]}]
    assert expand_config({"x": [[1, 2], 3]}) == [{"x": [1, 2]}, {"x": 3}]


def test_a_literal_list_is_taken_verbatim_even_if_it_holds_dicts_of_lists() -> None:
    assert expand_config({"x": [[{"a": [1, 2]}, [3, 4]]]}) == [{"x": [{"a": [1, 2]}, [3, 4]]}]


def test_dict_alternatives_expand_and_contribute_each_expansion() -> None:
    out = expand_config({"opt": [{"name": "sgd", "lr": [1, 2]}, {"name": "adam"}]})
    assert out == [
        {"opt": {"name": "sgd", "lr": 1}},
        {"opt": {"name": "sgd", "lr": 2}},
        {"opt": {"name": "adam"}},
    ]


def test_dict_alternatives_are_crossed_with_other_axes() -> None:
    out = expand_config({"opt": [{"lr": [1, 2]}, "none"], "bs": [8, 16]})
    assert out == [
        {"opt": opt, "bs": bs}
        for opt, bs in itertools.product([{"lr": 1}, {"lr": 2}, "none"], [8, 16])
    ]


def test_groups_span_dict_alternatives() -> None:
    # lr and m inside the only alternative and bs outside are one group "g": 2 configs. Before,
    # a group inside an alternative was local to it, and this gave 2 * 3.
    out = expand_config({"opt": [{"lr": [1, 2, "@g"], "m": [3, 4, "@g"]}], "bs": [8, 16, 32, "@g"]})
    assert out == [{"opt": {"lr": 1, "m": 3}, "bs": 8}, {"opt": {"lr": 2, "m": 4}, "bs": 16}]


def test_a_list_of_dict_alternatives_takes_the_index_of_the_chosen_element() -> None:
    # The list "a" is in group x: its index is the position of the dict chosen (0 or 1), not
    # the number of expansions before it. So a.a = 2 (inner index 1, outer index 0) is no config.
    out = expand_config({"a": [{"a": [1, 2, "@x"]}, {"a": 4}, "@x"], "b": {"c": [1, 2, "@x"]}})
    assert out == [{"a": {"a": 1}, "b": {"c": 1}}, {"a": {"a": 4}, "b": {"c": 2}}]


def test_a_list_inside_one_alternative_constrains_only_the_configs_that_chose_it() -> None:
    # lr is present only when opt chose its first dict: then bs must take lr's index. With
    # "none" chosen, bs is free. The order is that of the product of opt, opt[0].lr, bs (the
    # first slowest, an absent list counting as index 0).
    out = expand_config({"opt": [{"lr": [1, 2, "@g"]}, "none"], "bs": [8, 16, "@g"]})
    assert out == [
        {"opt": {"lr": 1}, "bs": 8},
        {"opt": {"lr": 2}, "bs": 16},
        {"opt": "none", "bs": 8},
        {"opt": "none", "bs": 16},
    ]


def test_an_alternative_whose_list_of_the_group_is_too_short_is_dropped_at_that_index() -> None:
    # At index 2 of group g, the first alternative's lr (2 values) cannot follow: only the
    # other alternative is left. Lists of one group cut to the shortest only where present.
    out = expand_config({"seed": [0, 1, 2, "@g"], "opt": [{"lr": [1, 2, "@g"]}, {"fixed": 1}]})
    assert out == [
        {"seed": 0, "opt": {"lr": 1}},
        {"seed": 0, "opt": {"fixed": 1}},
        {"seed": 1, "opt": {"lr": 2}},
        {"seed": 1, "opt": {"fixed": 1}},
        {"seed": 2, "opt": {"fixed": 1}},
    ]


def test_a_group_is_met_at_every_depth_of_nested_alternatives() -> None:
    # fluidml's cfg_9: four lists of group x, three of them inside alternatives of the others.
    out = expand_config(
        {
            "a": [
                {"b": [{"c": [{"d": [1, 2, "@x"]}, {"f": 3}, "@x"]}, {"g": 3}, "@x"]},
                {"e": 4},
                "@x",
            ]
        }
    )
    assert out == [{"a": {"b": {"c": {"d": 1}}}}, {"a": {"e": 4}}]


# -- expansion: zip groups ----------------------------------------------------------------------


def test_fluidml_example_groups_a_and_c_and_crosses_b() -> None:
    out = expand_config({"a": [1, 2, "@x"], "b": [1, 2, 3], "c": [1, 2, "@x"]})
    assert out == [{"a": i, "b": b, "c": i} for i in (1, 2) for b in (1, 2, 3)]


def test_a_group_sits_at_the_position_of_its_first_member() -> None:
    out = expand_config({"b": [1, 2, 3], "a": [1, 2, "@x"], "c": [1, 2, "@x"]})
    assert out == [{"b": b, "a": i, "c": i} for b in (1, 2, 3) for i in (1, 2)]


def test_nested_dict_lists_join_top_level_groups() -> None:
    out = expand_config({"model": {"lr": [1, 2, "@g"]}, "bs": [8, 16, "@g"]})
    assert out == [{"model": {"lr": 1}, "bs": 8}, {"model": {"lr": 2}, "bs": 16}]


def test_a_group_is_cut_to_its_shortest_member() -> None:
    out = expand_config({"a": [1, 2, 3, "@x"], "b": ["p", "q", "@x"], "c": [7, 8, 9, 10, "@x"]})
    assert out == [{"a": 1, "b": "p", "c": 7}, {"a": 2, "b": "q", "c": 8}]


def test_distinct_groups_are_crossed() -> None:
    out = expand_config(
        {"a": [1, 2, "@x"], "b": [3, 4, "@x"], "c": [5, 6, 7, "@y"], "d": [8, 9, 0, "@y"]}
    )
    assert out == [
        {"a": a, "b": b, "c": c, "d": d}
        for (a, b), (c, d) in itertools.product([(1, 3), (2, 4)], [(5, 8), (6, 9), (7, 0)])
    ]


def test_only_the_last_element_is_a_group_marker() -> None:
    assert expand_config({"a": ["@x", 1]}) == [{"a": "@x"}, {"a": 1}]


def test_group_prefix_is_configurable() -> None:
    config = {"a": [1, 2, "#g"], "b": [3, 4, "#g"]}
    assert expand_config(config, group_prefix="#") == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    # With the default prefix, "#g" is just a third alternative.
    assert len(expand_config(config)) == 9


def test_zip_method_zips_every_list_and_strips_markers() -> None:
    out = expand_config(
        {"a": [1, 2, 3], "b": ["x", "y", "@g"], "c": 5, "d": {"e": [7, 8, 9, "@h"]}}, expand="zip"
    )
    assert out == [
        {"a": 1, "b": "x", "c": 5, "d": {"e": 7}},
        {"a": 2, "b": "y", "c": 5, "d": {"e": 8}},
    ]


def test_zip_method_leaves_single_alternatives_as_constants() -> None:
    # As in fluidml: a one-element list does not cut the zip to one config.
    out = expand_config({"a": [1, 2, 3], "b": [5], "c": [[1, 2]]}, expand="zip")
    assert out == [{"a": a, "b": 5, "c": [1, 2]} for a in (1, 2, 3)]


def test_zip_method_applies_inside_dict_alternatives() -> None:
    out = expand_config({"opt": [{"lr": [1, 2], "m": [3, 4]}]}, expand="zip")
    assert out == [{"opt": {"lr": 1, "m": 3}}, {"opt": {"lr": 2, "m": 4}}]


def test_zip_method_is_one_group_across_alternatives_and_nested_dicts() -> None:
    # opt (2 alternatives), its lr, and bs are all in the one zip group; m (one value) is not.
    out = expand_config(
        {"opt": [{"lr": [1, 2, 3], "m": [0]}, {"name": "adam"}], "bs": [8, 16, 32]}, expand="zip"
    )
    assert out == [{"opt": {"lr": 1, "m": 0}, "bs": 8}, {"opt": {"name": "adam"}, "bs": 16}]


def test_zip_method_zips_two_lists_of_a_nested_dict() -> None:
    # The rule zips lists, not dicts: 2 configs. (fluidml's code also zips the index of the
    # nested dict's own expansions, 0..3 here, with the lists', and returns only the first.)
    out = expand_config({"m": {"p": [1, 2], "q": [3, 4]}}, expand="zip")
    assert out == [{"m": {"p": 1, "q": 3}}, {"m": {"p": 2, "q": 4}}]


# -- expansion: fluidml's published cases --------------------------------------------------------
#
# The 15 cases of fluidml's tests/unit/fluidml/flow/test_config_expansion.py, in our API. Its
# conventions, mapped: a group marker is the whole string "@x" there (the identifier keeps the
# prefix) and the name after the prefix here, the same lists either way. That file calls
# ``expand_config(config, expand=...)`` with fluidml's default ``group_prefix=None``, under which
# "@x" would be a plain value (cfg_3 would give 588 configs); its counts are those of
# ``group_prefix="@"``, which its later copy of the file (tests/unit/fluidml/
# test_config_expansion.py) passes, so every case here passes ``group_prefix="@"``. fluidml's
# "zip" also drops the markers and zips every list of more than one value, as ours. Its unknown
# method raises GridSearchExpansionError, ours FlowError. Every published count agrees with
# the rule (API.md section 3 "Expansion").

_FLUIDML: dict[str, dict[str, Any]] = {
    "cfg_1": {},
    "cfg_2": {
        "a": [{"a": [1, 2]}, {"a": 4}],
        "b": {"c": [1, 2, 3], "d": "hallo", "e": {}},
        "c": {"test": True, "funny": {"x": [[1, 2, 3, 4]], "y": False}},
    },
    "cfg_3": {
        "param_1": [{"a": [1, 2, "@b"]}, {"a": [1, 2, "@b"]}, "@x"],
        "param_3": [
            {
                "param_3_2": [3, 4, "@abc"],
                "param_3_3": {"a": 99, "b": [[5, 6]]},
                "bla": [1, 2, "@b"],
                "blub": {"c": [1, 2, "@abc"], "d": [3, 4, "@abc"]},
            },
            {"param_3_4": 99, "bla": [1, 2]},
            "@x",
        ],
    },
    "cfg_4": {
        "param_1": [{"a": [1, 2, "@b"]}, {"a": [1, 2, "@b"]}, "@x"],
        "param_3": [
            {
                "param_3_2": [3, 4, "@b"],
                "param_3_3": {"a": 99, "b": [[5, 6]]},
                "bla": [1, 2, "@b"],
                "blub": {"c": [1, 2, "@b"], "d": [3, 4, "@b"]},
            },
            {"param_3_4": 99, "bla": [1, 2, "@b"]},
            "@x",
        ],
    },
    "cfg_5": {
        "param_1": [{"a": [1, 2]}, {"a": [1, 2]}],
        "param_3": [
            {
                "param_3_2": [3, 4],
                "param_3_3": {"a": 99, "b": [[5, 6]]},
                "bla": [1, 2],
                "blub": {"c": [1, 2], "d": [3, 4]},
            },
            {"param_3_4": 99, "bla": [1, 2]},
        ],
    },
    "cfg_6": {
        "a": [{"a": [1, 2, "@x"]}, {"a": 4}],
        "b": {"c": [1, 2, 3, "@x"]},
        "c": {"test": [True, False], "funny": {"y": [True, False, "@x"]}},
    },
    "cfg_7": {
        "a": [{"a": [1, 2, "@x"]}, {"a": 4}, "@x"],
        "b": {"c": [1, 2, "@x"]},
        "c": {"test": True, "funny": {"x": [[[1, 2, 3, 4]]], "y": False}},
    },
    "cfg_8": {
        "a": [{"a": [1, 2, "@x"]}, {"a": 4}, "@z"],
        "b": {"c": [1, 2, 3, "@x"], "e": {}},
        "c": {
            "test": [True, False, "@z"],
            "funny": {"x": [[[1, 2, 3, 4]]], "y": [True, False, "@x"]},
        },
    },
    "cfg_9": {
        "a": [{"b": [{"c": [{"d": [1, 2, "@x"]}, {"f": 3}, "@x"]}, {"g": 3}, "@x"]}, {"e": 4}, "@x"]
    },
    "cfg_10": {"a": [{"b": [{"d": [1, 2, "@x"]}, {"e": 3}, "@x"]}, {"c": 4}, "@x"]},
}


@pytest.mark.parametrize(
    ("name", "method", "count"),
    [
        ("cfg_1", "product", 1),
        ("cfg_2", "product", 9),
        ("cfg_2", "zip", 2),
        ("cfg_3", "product", 8),
        ("cfg_4", "product", 4),
        ("cfg_5", "product", 72),
        ("cfg_5", "zip", 2),
        ("cfg_6", "product", 8),
        ("cfg_7", "product", 2),
        ("cfg_8", "product", 4),
        ("cfg_9", "product", 2),
        ("cfg_9", "zip", 2),
        ("cfg_10", "product", 2),
        ("cfg_10", "zip", 2),
        ("cfg_10", "undefined", 2),
    ],
)
def test_fluidml_published_cases_by_count(name: str, method: str, count: int) -> None:
    config = copy.deepcopy(_FLUIDML[name])
    if method == "undefined":
        with pytest.raises(FlowError, match="unknown expand method"):
            expand_config(config, expand=method, group_prefix="@")
        return
    out = expand_config(config, expand=method, group_prefix="@")
    assert len(out) == count
    assert config == _FLUIDML[name]  # the input is left as it was
    assert out == _reference(config, method)


def test_fluidml_cfg_2_zip_by_content() -> None:
    # a (2 dicts) and b.c (3 values) zip, cut to 2; inside the first dict, a.a zips too.
    constant = {"test": True, "funny": {"x": [1, 2, 3, 4], "y": False}}
    assert expand_config(_FLUIDML["cfg_2"], expand="zip") == [
        {"a": {"a": 1}, "b": {"c": 1, "d": "hallo", "e": {}}, "c": constant},
        {"a": {"a": 4}, "b": {"c": 2, "d": "hallo", "e": {}}, "c": constant},
    ]


def test_fluidml_cfg_4_by_content() -> None:
    # Group x picks the dict alternatives of param_1 and param_3 together; group b then runs
    # through every list of b present in that choice, at every depth.
    out = expand_config(_FLUIDML["cfg_4"])
    first = {"param_3_3": {"a": 99, "b": [5, 6]}}
    assert out == [
        {
            "param_1": {"a": i},
            "param_3": {
                "param_3_2": i + 2,
                **first,
                "bla": i,
                "blub": {"c": i, "d": i + 2},
            },
        }
        for i in (1, 2)
    ] + [{"param_1": {"a": i}, "param_3": {"param_3_4": 99, "bla": i}} for i in (1, 2)]


def test_fluidml_cfg_6_by_content() -> None:
    # a (2 dicts, no group) crossed with c.test; a.a, b.c and c.funny.y are group x, b.c's 3
    # cut to 2 where a.a is present, and to 2 by c.funny.y where it is not.
    out = expand_config(_FLUIDML["cfg_6"])
    assert out == [
        {"a": {"a": i}, "b": {"c": i}, "c": {"test": test, "funny": {"y": y}}}
        for i, y in ((1, True), (2, False))
        for test in (True, False)
    ] + [
        {"a": {"a": 4}, "b": {"c": i}, "c": {"test": test, "funny": {"y": y}}}
        for i, y in ((1, True), (2, False))
        for test in (True, False)
    ]


def test_fluidml_cfg_7_by_content() -> None:
    # The example: the first 2 of a.a is no config (inner index 1, outer index 0).
    constant = {"test": True, "funny": {"x": [[1, 2, 3, 4]], "y": False}}
    assert expand_config(_FLUIDML["cfg_7"]) == [
        {"a": {"a": 1}, "b": {"c": 1}, "c": constant},
        {"a": {"a": 4}, "b": {"c": 2}, "c": constant},
    ]


def test_fluidml_cfg_8_by_content() -> None:
    # Two groups: z picks a's alternative with c.test, x ties a.a, b.c and c.funny.y.
    out = expand_config(_FLUIDML["cfg_8"])
    x = [[1, 2, 3, 4]]
    assert out == [
        {"a": {"a": a}, "b": {"c": c, "e": {}}, "c": {"test": test, "funny": {"x": x, "y": y}}}
        for a, c, test, y in (
            (1, 1, True, True),
            (2, 2, True, False),
            (4, 1, False, True),
            (4, 2, False, False),
        )
    ]


# -- expansion: errors ------------------------------------------------------------------------


def test_unknown_method_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(FlowError, match=r"'grid'.*product.*zip"):
        expand_config({"a": [1]}, expand="grid")
    assert issubclass(FlowError, ValueError)


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"a": []}, "'a'"),
        ({"m": {"a": []}}, "'m.a'"),
        ({"a": ["@x"]}, "'a'"),
        ({"opt": [{"lr": []}]}, "'opt[0].lr'"),
        ({"opt": [1, {"m": {"lr": ["@g"]}}]}, "'opt[1].m.lr'"),
    ],
)
def test_empty_alternatives_name_the_key_path_and_suggest_a_literal(
    config: dict[str, Any], path: str
) -> None:
    with pytest.raises(FlowError, match=r"no alternatives") as info:
        expand_config(config)
    assert path in str(info.value)
    assert "[[]]" in str(info.value)


def test_a_marker_naming_no_group_is_an_error() -> None:
    with pytest.raises(FlowError, match=r"'a'.*'@'"):
        expand_config({"a": [1, 2, "@"]})


@pytest.mark.parametrize("config", [[{"a": 1}], "a=1", 3, ({"a": 1},)])
def test_a_config_that_is_not_a_mapping_is_an_error(config: Any) -> None:
    with pytest.raises(FlowError, match="mapping"):
        expand_config(config)


def test_non_str_keys_are_errors_naming_the_key_and_where() -> None:
    with pytest.raises(FlowError, match=r"config key 1 must be a str"):
        expand_config({1: [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(FlowError, match=r"config key \(1, 2\) in 'm.n' must be a str"):
        expand_config({"m": {"n": {(1, 2): 3}}})


@pytest.mark.parametrize("prefix", ["", None, 1])
def test_bad_group_prefix_is_an_error(prefix: Any) -> None:
    with pytest.raises(FlowError, match="group_prefix"):
        expand_config({"a": [1]}, group_prefix=prefix)


def test_a_config_containing_itself_is_an_error() -> None:
    config: dict[str, Any] = {"a": [1, 2]}
    config["self"] = config
    with pytest.raises(FlowError, match="contains itself"):
        expand_config(config)


# -- expansion: fresh outputs and cost --------------------------------------------------------


def test_outputs_share_no_mutable_container_with_the_input_or_each_other() -> None:
    config: dict[str, Any] = {
        "const": {"nested": [[1, {"deep": [2]}]]},
        "tup": ([1], {"k": [2]}),
        "lit": [[[1], [2]]],
        "alt": [[1, 2], [3]],
        "opt": [{"name": "sgd", "params": {"lr": [1, 2]}, "tags": [["a"]]}],
        "set": [{1, 2}],
        "bs": [8, 16],
    }
    before = copy.deepcopy(config)
    out = expand_config(config)
    assert len(out) == 2 * 2 * 2
    snapshot = copy.deepcopy(out)
    first = out[0]
    first["const"]["nested"][1]["deep"].append(99)
    first["tup"][0].append(99)
    first["tup"][1]["k"].append(99)
    first["lit"][0].append(99)
    first["alt"].append(99)
    first["opt"]["params"]["lr"] = 99
    first["opt"]["tags"].append(99)
    first["set"].add(99)
    assert config == before
    assert out[1:] == snapshot[1:]
    # The same alternative chosen by two outputs is two distinct objects.
    assert out[0]["opt"] is not out[1]["opt"]
    assert out[0]["alt"] is not out[1]["alt"]


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the dicts expansion builds (one element, incremented per dict)."""
    count = [0]
    render = config_module._render

    def counting(*args: Any) -> dict[str, Any]:
        count[0] += 1
        return render(*args)

    monkeypatch.setattr(config_module, "_render", counting)
    return count


def test_a_large_zip_group_expands_in_linear_time(renders: list[int]) -> None:
    # 30 lists of 10 values in one group: 10 configs. The product-then-filter method would walk
    # 10**30 points; count the dicts actually built instead of trusting a clock alone.
    config = {f"k{i}": [*range(i, i + 10), "@g"] for i in range(30)}
    started = time.perf_counter()
    out = expand_config(config)
    assert time.perf_counter() - started < 5
    assert out == [{f"k{i}": i + j for i in range(30)} for j in range(10)]
    assert renders[0] == 10


def test_dict_alternatives_are_built_only_when_chosen(renders: list[int]) -> None:
    # The only alternative of "b" holds 10**8 points, cut to 2 by group g with "a": 2 outer
    # dicts and 2 inner ones are built, where product-then-filter walks 2 * 10**8 points.
    big = list(range(10_000))
    out = expand_config({"a": [1, 2, "@g"], "b": [{"x": [*big, "@g"], "y": [*big, "@g"]}]})
    assert out == [{"a": 1, "b": {"x": 0, "y": 0}}, {"a": 2, "b": {"x": 1, "y": 1}}]
    assert renders[0] == 4


def test_an_index_no_later_list_can_meet_is_cut_before_walking_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Group g is fixed by "a" (1000 values) first and met only at the end, by "z" (2 values)
    # inside an alternative. In between, 10**3 points of ungrouped lists. Walking them for each
    # of the 1000 indices before finding that "z" cannot follow is 10**6 steps; the walk
    # visits each list once per config it yields instead.
    frames = [0]
    frame = config_module._frame

    def counting(*args: Any) -> Any:
        frames[0] += 1
        return frame(*args)

    monkeypatch.setattr(config_module, "_frame", counting)
    config = {
        "a": [*range(1000), "@g"],
        "b": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "c": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "d": [{"e": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}],
        "y": [{"z": [1, 2, "@g"]}],
    }
    out = expand_config(config)
    assert len(out) == 2 * 10**3
    assert {(c["a"], c["y"]["z"]) for c in out} == {(0, 1), (1, 2)}
    # One frame per list per config at most (5 lists), plus the first.
    assert frames[0] <= 5 * len(out) + 1


def test_a_large_product_is_fast() -> None:
    started = time.perf_counter()
    out = expand_config({"a": list(range(100)), "b": list(range(100)), "c": {"d": [1, 2, 3]}})
    assert len(out) == 30_000
    assert time.perf_counter() - started < 5


# -- expansion: property tests against a naive reference --------------------------------------


def _reference(config: dict[str, Any], expand: str = "product") -> list[dict[str, Any]]:
    """The rule of API.md section 3, literally, at the cost of the full product.

    Every list of the config, at every depth and inside every alternative, is numbered depth
    first (a list before the lists inside its alternatives). Each point of the product of all
    their indices (the first list varying slowest) gives the config reached by following its
    indices from the top; the lists followed are the ones present. A point where two present
    lists of one group took different indices is dropped. Points that differ only in lists
    absent from their config are one config, kept where it first appears: configs are
    identified by the indices of their present lists, never by value, so ``[1, 1]`` stands
    for two configs, as in the real one.
    """
    lists: list[tuple[list[tuple[bool, Any]], str | None]] = []

    def parse(node: dict[str, Any]) -> list[tuple[str, str, Any]]:
        entries: list[tuple[str, str, Any]] = []
        for key, value in node.items():
            if isinstance(value, list):
                group = None
                if isinstance(value[-1], str) and value[-1].startswith("@"):
                    group, value = value[-1], value[:-1]
                if expand == "zip":
                    group = "zip" if len(value) > 1 else None
                number = len(lists)
                lists.append(([], group))
                lists[number][0].extend(
                    (True, parse(item)) if isinstance(item, dict) else (False, item)
                    for item in value
                )
                entries.append((key, "list", number))
            elif isinstance(value, dict):
                entries.append((key, "dict", parse(value)))
            else:
                entries.append((key, "const", value))
        return entries

    def build(
        entries: list[tuple[str, str, Any]], point: tuple[int, ...], present: list[int]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, kind, payload in entries:
            if kind == "const":
                out[key] = copy.deepcopy(payload)
            elif kind == "dict":
                out[key] = build(payload, point, present)
            else:
                present.append(payload)
                is_dict, item = lists[payload][0][point[payload]]
                out[key] = build(item, point, present) if is_dict else copy.deepcopy(item)
        return out

    root = parse(config)
    out: list[dict[str, Any]] = []
    seen: set[tuple[tuple[int, int], ...]] = set()
    for point in itertools.product(*(range(len(items)) for items, _ in lists)):
        present: list[int] = []
        result = build(root, point, present)
        taken: dict[str, set[int]] = {}
        for number in present:
            group = lists[number][1]
            if group is not None:
                taken.setdefault(group, set()).add(point[number])
        if any(len(indices) > 1 for indices in taken.values()):
            continue
        identity = tuple((number, point[number]) for number in present)
        if identity not in seen:
            seen.add(identity)
            out.append(result)
    return out


# Plain values; "b@" is no marker, since a marker starts with the prefix.
_scalars = st.sampled_from([0, 1, 2, -1, "a", "b@", None, True, False])


def _lists(children: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Lists of alternatives: scalars, literal lists and (twice as likely) dicts, most ending
    with a group marker, so that groups often span alternatives and depths."""
    alternatives = st.lists(
        st.one_of(_scalars, st.lists(_scalars, max_size=2), children, children),
        min_size=1,
        max_size=3,
    )
    marker = st.sampled_from([None, "@x", "@x", "@y"])
    return st.tuples(alternatives, marker).map(lambda t: t[0] if t[1] is None else [*t[0], t[1]])


_configs = st.recursive(
    st.dictionaries(st.sampled_from("ab"), _scalars, max_size=2),
    lambda children: st.dictionaries(
        st.sampled_from("abcd"),
        st.one_of(_scalars, children, _lists(children), _lists(children)),
        max_size=3,
    ),
    max_leaves=8,
)


@settings(max_examples=120, deadline=None)
@given(_configs, st.sampled_from(["product", "zip"]))
def test_expansion_matches_the_naive_reference(config: dict[str, Any], expand: str) -> None:
    assert expand_config(config, expand) == _reference(config, expand)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=3),
        st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=4)),
        max_size=5,
    )
)
def test_product_size_is_the_product_of_list_lengths(config: dict[str, Any]) -> None:
    out = expand_config(config)
    lengths = [len(v) for v in config.values() if isinstance(v, list)]
    assert len(out) == math.prod(lengths)
    zipped = expand_config(config, expand="zip")
    assert len(zipped) == min((n for n in lengths if n > 1), default=1)


# -- strip_ignored ----------------------------------------------------------------------------


def test_strip_ignored_removes_prefixed_keys_at_every_level() -> None:
    config = {
        "a": 1,
        "_b": 2,
        "_": 3,
        "m": {"_c": 3, "d": {"_e": 4, "f": 5}},
        "l": [{"_g": 1, "h": 2}, 3],
        "t": ({"_i": 1, "j": 2},),
        "x_y": 4,
        1: "non-str keys are kept",
    }
    before = copy.deepcopy(config)
    assert strip_ignored(config, "_") == {  # type: ignore[arg-type]
        "a": 1,
        "m": {"d": {"f": 5}},
        "l": [{"h": 2}, 3],
        "t": ({"j": 2},),
        "x_y": 4,
        1: "non-str keys are kept",
    }
    assert config == before


def test_strip_ignored_with_none_keeps_everything_in_fresh_dicts() -> None:
    config = {"_a": 1, "m": {"_b": [1]}}
    out = strip_ignored(config, None)
    assert out == config
    assert out is not config
    assert out["m"] is not config["m"]


def test_strip_ignored_with_a_longer_prefix() -> None:
    assert strip_ignored({"ign_a": 1, "ig": 2, "b": {"ign_c": 3}}, "ign_") == {"ig": 2, "b": {}}


@pytest.mark.parametrize("prefix", ["", 1])
def test_strip_ignored_rejects_a_bad_prefix(prefix: Any) -> None:
    with pytest.raises(FlowError, match="prefix"):
        strip_ignored({"a": 1}, prefix)


# -- canonical_json ---------------------------------------------------------------------------


class Optim(BaseModel):
    name: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_canonical_json_text_is_sorted_compact_and_ascii() -> None:
    text = canonical_json({"b": 1, "a": [True, None, 1.5, "é", -0.0, 10**30]}, task="t")
    assert text == '{"a":[true,null,1.5,"\\u00e9",-0.0,1000000000000000000000000000000],"b":1}'


def test_canonical_json_does_not_depend_on_key_order() -> None:
    one = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    two = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert canonical_json(one, task="t") == canonical_json(two, task="t")


def test_canonical_json_writes_tuples_as_lists() -> None:
    assert canonical_json({"a": (1, (2, 3))}, task="t") == canonical_json(
        {"a": [1, [2, 3]]}, task="t"
    )


def test_canonical_json_distinguishes_bool_int_and_float() -> None:
    texts = {canonical_json({"a": v}, task="t") for v in (True, 1, 1.0, "1")}
    assert len(texts) == 4
    assert canonical_json(False, task="t") != canonical_json(0, task="t")


def test_canonical_json_dumps_pydantic_models_without_touching_the_input() -> None:
    model = Optim(name="adam", lr=0.001)
    config = {"opt": model, "n": [model]}
    text = canonical_json(config, task="t")
    plain = {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999]}
    assert text == canonical_json({"opt": plain, "n": [plain]}, task="t")
    assert config == {"opt": model, "n": [model]}


def test_canonical_json_accepts_mappings_and_subclasses_of_json_types() -> None:
    config = {"m": types.MappingProxyType({"b": 1, "a": Color.RED}), "lvl": Level.HIGH}
    assert canonical_json(config, task="t") == '{"lvl":3,"m":{"a":"red","b":1}}'


class Unserialisable(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: object


@pytest.mark.parametrize(
    ("config", "path", "what"),
    [
        ({"model": {"layers": [1, 2, {3}]}}, "config key 'model.layers[2]'", "holds a set"),
        ({"a": frozenset()}, "config key 'a'", "holds a frozenset"),
        ({"a": [object()]}, "config key 'a[0]'", "holds an object"),
        ({"a": {"b": math.nan}}, "config key 'a.b'", "holds the float nan"),
        ({"a": (1, math.inf)}, "config key 'a[1]'", "holds the float inf"),
        ({"a": -math.inf}, "config key 'a'", "holds the float -inf"),
        ({"a": b"x"}, "config key 'a'", "holds a bytes"),
        ({"a": [[1j]]}, "config key 'a[0][0]'", "holds a complex"),
        ({"m": {1: "x"}}, "config key 'm'", "has the key 1"),
        ({"m": [{"k": {(1,): 2}}]}, "config key 'm[0].k'", "has the key (1,)"),
        (
            {"opt": Unserialisable(thing=object())},
            "config key 'opt'",
            "holds an Unserialisable model that cannot be dumped",
        ),
        ({2: "x"}, "the config", "has the key 2"),
        ({1, 2}, "the config", "holds a set"),
    ],
)
def test_non_json_values_are_errors_naming_task_and_key_path(
    config: Any, path: str, what: str
) -> None:
    with pytest.raises(FlowError) as info:
        canonical_json(config, task="train")
    message = str(info.value)
    assert message.startswith(f"{path} of task 'train' {what}")
    if isinstance(config, dict) and all(isinstance(k, str) for k in config):
        with pytest.raises(FlowError) as info:
            config_hash("train", config)
        assert str(info.value) == message


def test_the_documented_message_shape() -> None:
    with pytest.raises(FlowError) as info:
        canonical_json({"model": {"layers": [1, 2, {3}]}}, task="train")
    assert str(info.value) == (
        "config key 'model.layers[2]' of task 'train' holds a set, which is not JSON-representable"
    )


def test_a_value_containing_itself_is_an_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(FlowError, match=r"task 'train' contains itself"):
        canonical_json({"a": loop}, task="train")


# -- config_hash ------------------------------------------------------------------------------

_CONFIG = {"lr": 0.1, "model": {"layers": [64, 32], "act": "relu"}, "flag": True, "name": "é"}
_PREDECESSORS = [("prep", "0123456789abcdef"), ("load", "fedcba9876543210")]
# Computed once; if this changes, every cached result of every user becomes unreachable.
_KNOWN_HASH = "c7aa729d21170504"


def test_config_hash_has_a_fixed_known_value() -> None:
    assert config_hash("train", _CONFIG, _PREDECESSORS) == _KNOWN_HASH


def test_config_hash_is_sha256_of_the_documented_canonical_json() -> None:
    node = {"task": "train", "config": _CONFIG, "requires": sorted(map(list, _PREDECESSORS))}
    text = canonical_json(node, task="train")
    assert text == json.dumps(node, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert (
        config_hash("train", _CONFIG, _PREDECESSORS)
        == (hashlib.sha256(text.encode()).hexdigest()[:16])
    )


def test_config_hash_depends_on_task_config_and_predecessors() -> None:
    base = config_hash("train", _CONFIG, _PREDECESSORS)
    assert len(base) == 16
    assert int(base, 16) >= 0
    others = {
        config_hash("eval", _CONFIG, _PREDECESSORS),
        config_hash("train", {**_CONFIG, "lr": 0.2}, _PREDECESSORS),
        config_hash("train", {**_CONFIG, "flag": 1}, _PREDECESSORS),
        config_hash("train", {**_CONFIG, "extra": None}, _PREDECESSORS),
        config_hash("train", _CONFIG, _PREDECESSORS[:1]),
        config_hash("train", _CONFIG, [("prep", "0123456789abcdee"), _PREDECESSORS[1]]),
        config_hash("train", _CONFIG, [("prop", "0123456789abcdef"), _PREDECESSORS[1]]),
        config_hash("train", _CONFIG),
    }
    assert base not in others
    assert len(others) == 8


def test_config_hash_does_not_depend_on_predecessor_or_key_order() -> None:
    reordered = dict(reversed(list(_CONFIG.items())))
    assert config_hash("train", reordered, list(reversed(_PREDECESSORS))) == _KNOWN_HASH
    pairs_as_lists = iter([list(p) for p in _PREDECESSORS])  # as read back from JSON
    assert config_hash("train", _CONFIG, pairs_as_lists) == _KNOWN_HASH  # type: ignore[arg-type]


def test_config_hash_treats_tuples_as_lists_and_models_as_their_dump() -> None:
    assert config_hash("t", {"a": (1, 2)}) == config_hash("t", {"a": [1, 2]})
    model = Optim(name="adam", lr=0.001)
    assert config_hash("t", {"o": model}) == config_hash("t", {"o": model.model_dump(mode="json")})


@pytest.mark.parametrize("predecessors", [[("a",)], [("a", 1)], ["ab"], [None], [("a", "b", "c")]])
def test_config_hash_rejects_malformed_predecessors(predecessors: Any) -> None:
    with pytest.raises(FlowError, match=r"predecessor of task 'train'"):
        config_hash("train", {}, predecessors)


def test_config_hash_rejects_a_bad_task_or_config() -> None:
    with pytest.raises(FlowError, match="task name"):
        config_hash(1, {})  # type: ignore[arg-type]
    with pytest.raises(FlowError, match=r"task 'train' must be a mapping"):
        config_hash("train", [1])  # type: ignore[arg-type]


def test_config_hash_is_identical_across_processes_and_hash_seeds() -> None:
    code = (
        "from aioflows.flow.identity import config_hash\n"
        f"config = {_CONFIG!r}\n"
        "config.update({f'k{i}': {'s': f'v{i}', 'l': [i, str(i)]} for i in range(50)})\n"
        f"print(config_hash('train', config, {_PREDECESSORS!r}))\n"
    )
    local: dict[str, Any] = {}
    exec(code.replace("print(", "result = ("), local)
    digests = {local["result"]}
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(done.stdout.strip())
    assert len(digests) == 1
