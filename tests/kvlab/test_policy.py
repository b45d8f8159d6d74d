"""The technique registry and policy validation: every registered technique, one matrix."""

from __future__ import annotations

import pytest

from kvlab.policy import parse_policy
from kvlab.techniques import REGISTRY, PolicyError

TECHNIQUES = sorted(REGISTRY)


def test_empty_policy_is_the_full_cache():
    assert parse_policy({}) == {}
    assert parse_policy("{}") == {}
    assert parse_policy(None) == {}


@pytest.mark.parametrize("name", TECHNIQUES)
def test_defaults_fill_in(name):
    t = REGISTRY[name]
    parsed = parse_policy({name: t.example()})
    assert parsed == {name: {p.name: p.default for p in t.params} | t.example()}
    # the defaults themselves must pass their own checks
    assert parse_policy({name: parsed[name]}) == parsed


@pytest.mark.parametrize("name", TECHNIQUES)
def test_describe_is_plain_data(name):
    import json

    d = REGISTRY[name].describe()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == name and d["summary"] and d["source"]
    assert all(p["help"] for p in d["params"])


@pytest.mark.parametrize("name", TECHNIQUES)
def test_every_param_rejects_garbage(name):
    t = REGISTRY[name]
    for p in t.params:
        # None means "not given" for an optional parameter (default None), and is garbage
        # for every other; a string is garbage unless the parameter is one
        bads = [[1], {"a": 1}] + ([] if p.default is None else [None]) + ([] if p.kind == "str" else ["x"])
        for bad in bads:
            with pytest.raises(PolicyError, match=f"{name}.{p.name}"):
                parse_policy({name: t.example() | {p.name: bad}})
        if p.choices:
            wrong = "nope" if p.kind == "str" else max(p.choices) * 2 + 1
            with pytest.raises(PolicyError, match="must be one of"):
                parse_policy({name: t.example() | {p.name: wrong}})


@pytest.mark.parametrize(
    "policy, words",
    [
        ({"nope": {}}, "unknown technique 'nope'"),
        ({"quant": {"kbits": 4}}, "unknown parameter 'kbits'"),
        ({"quant": {"k_bits": 5}}, "quant.k_bits must be one of 32, 16, 8, 4"),
        ({"quant": {"v_bits": 2.5}}, "whole number"),
        ({"quant": {"k_bits": True}}, "must be a number"),
        ({"quant": {"group_size": 48}}, "quant.group_size must be one of 16, 32, 64"),
        ({"quant": 4}, "takes an object"),
        ([1, 2], "a policy is a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_policies_say_what_is_wrong(policy, words):
    with pytest.raises(PolicyError) as e:
        parse_policy(policy)
    assert words in str(e.value)


def test_quant_accepts_every_bit_pair():
    for k in (32, 16, 8, 4):
        for v in (32, 16, 8, 4):
            assert parse_policy({"quant": {"k_bits": k, "v_bits": v}})["quant"]["k_bits"] == k
