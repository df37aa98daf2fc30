"""Config expansion and node identity: every rule of API.md section 3 "Expansion" and "Identity".

Expansion is checked on hand-written cases and, with hypothesis, against a naive reference
(product of every axis, then keep the points where each zip group's members agree): the obvious
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


def test_groups_inside_dict_alternatives_are_local() -> None:
    # Inside the element, lr and m are zipped (2 alternatives); outside, bs is alone in its
    # group "g" (3 values): 2 * 3. Had the groups joined, there would be 2.
    out = expand_config({"opt": [{"lr": [1, 2, "@g"], "m": [3, 4, "@g"]}], "bs": [8, 16, 32, "@g"]})
    assert out == [
        {"opt": opt, "bs": bs}
        for opt, bs in itertools.product([{"lr": 1, "m": 3}, {"lr": 2, "m": 4}], [8, 16, 32])
    ]


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
    # "b" has 10**8 alternatives (one dict element), cut to 2 by its group: 2 outer dicts and
    # 2 inner ones are built, not 10**8.
    big = list(range(10_000))
    out = expand_config({"a": [1, 2, "@g"], "b": [{"x": big, "y": big}, "@g"]})
    assert out == [{"a": 1, "b": {"x": 0, "y": 0}}, {"a": 2, "b": {"x": 0, "y": 1}}]
    assert renders[0] == 4


def test_a_large_product_is_fast() -> None:
    started = time.perf_counter()
    out = expand_config({"a": list(range(100)), "b": list(range(100)), "c": {"d": [1, 2, 3]}})
    assert len(out) == 30_000
    assert time.perf_counter() - started < 5


# -- expansion: property tests against a naive reference --------------------------------------


def _reference(config: dict[str, Any], expand: str = "product") -> list[dict[str, Any]]:
    """Product of every axis, then keep the points where each group's members agree."""
    axes: list[tuple[tuple[str, ...], list[Any], str | None]] = []

    def collect(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, list):
                group = None
                if isinstance(value[-1], str) and value[-1].startswith("@"):
                    group, value = value[-1], value[:-1]
                alternatives = [
                    alt
                    for item in value
                    for alt in (_reference(item, expand) if isinstance(item, dict) else [item])
                ]
                if expand == "zip":
                    group = "zip" if len(alternatives) > 1 else None
                axes.append(((*path, key), alternatives, group))
            elif isinstance(value, dict):
                collect(value, (*path, key))

    collect(config, ())
    out = []
    for point in itertools.product(*(range(len(alts)) for _, alts, _ in axes)):
        chosen: dict[str, set[int]] = {}
        for (_, _, group), index in zip(axes, point, strict=True):
            if group is not None:
                chosen.setdefault(group, set()).add(index)
        if any(len(indices) > 1 for indices in chosen.values()):
            continue
        result = copy.deepcopy(config)
        for (path, alts, _), index in zip(axes, point, strict=True):
            target = result
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = copy.deepcopy(alts[index])
        out.append(result)
    return out


_scalars = st.one_of(st.integers(-5, 5), st.text("abc@", max_size=2), st.none(), st.booleans())


def _lists(children: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Lists of alternatives: scalars (none that looks like a marker), literal lists and dicts,
    optionally ending with a group marker."""
    alternatives = st.lists(
        st.one_of(
            _scalars.filter(lambda v: not (isinstance(v, str) and v.startswith("@"))),
            st.lists(_scalars, max_size=2),
            children,
        ),
        min_size=1,
        max_size=3,
    )
    marker = st.one_of(st.none(), st.sampled_from(["@x", "@y"]))
    return st.tuples(alternatives, marker).map(lambda t: t[0] if t[1] is None else [*t[0], t[1]])


_configs = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), _scalars, max_size=2),
    lambda children: st.dictionaries(
        st.sampled_from("abcdef"),
        st.one_of(_scalars, children, _lists(children)),
        max_size=4,
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
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
