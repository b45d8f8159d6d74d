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
        ({"quant": {"k_bits": 5}}, "quant.k_bits must be one of 32, 16, 8, 4, 3, 2"),
        ({"quant": {"k_format": "q5_0"}}, "quant.k_format must be one of"),
        ({"quant": {"k_format": "q4_0", "k_bits": 8}}, "stores 4 bits, but k_bits says 8"),
        ({"quant": {"v_bits": 2.5}}, "whole number"),
        ({"quant": {"k_bits": True}}, "must be a number"),
        ({"quant": {"group_size": 48}}, "quant.group_size must be one of 16, 32, 64"),
        ({"quant": {"recent_k": -1}}, "quant.recent_k must be"),
        ({"quant": {"recent_v": 1.5}}, "whole number"),
        ({"quant": {"k_axis": "row"}}, "quant.k_axis must be one of 'token', 'channel'"),
        ({"quant": {"k_bits": 8, "k_axis": "channel"}}, "needs 4, 3 or 2-bit keys"),
        ({"quant": {"k_format": "turbo3", "k_axis": "channel"}}, "the keys are turbo3"),
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
    for k in (32, 16, 8, 4, 3, 2):
        for v in (32, 16, 8, 4, 3, 2):
            assert parse_policy({"quant": {"k_bits": k, "v_bits": v}})["quant"]["k_bits"] == k


def test_quant_formats_by_name_or_width():
    from kvlab import formats
    from kvlab.techniques.quant import Quant

    for name, f in formats.BY_NAME.items():
        if f == formats.NONE:  # holds nothing: collapse's, not quant's
            with pytest.raises(PolicyError, match="must be one of"):
                parse_policy({"quant": {"k_format": name}})
            continue
        p = parse_policy({"quant": {"k_format": name, "v_format": name}})["quant"]
        assert Quant.formats_of(p) == (f, f)
    p = parse_policy({"quant": {"k_format": "q4_0", "k_bits": 4, "v_bits": 2}})["quant"]  # the width agrees
    assert Quant.formats_of(p) == (formats.Q4_0, formats.Q2)
    assert Quant.formats_of(parse_policy({"quant": {"k_bits": 3}})["quant"]) == (formats.Q3, formats.F32)


def test_every_example_and_preset_of_the_page_is_a_valid_policy():
    """The page's lessons.json names policies as data: each must parse, and each parameter
    it explains must exist."""
    import json
    from pathlib import Path

    lessons = json.loads((Path(__file__).resolve().parents[2] / "site" / "static" / "lessons.json").read_text())
    shown = lessons["examples"] + lessons["presets"]
    assert len(shown) >= 10
    for item in shown:
        parse_policy(item["policy"])
    for name, lesson in lessons["techniques"].items():
        assert set(lesson.get("params", {})) <= {p.name for p in REGISTRY[name].params}, name


def test_quant_windows_beyond_the_context_are_refused():
    """A recent_k / recent_v window the model's context cannot fill would never age:
    refused before the store is touched (with the model's numbers in the message)."""
    from kvlab.policy import Applied, Context

    model = {"context": 8192, "head_dim": 64}
    Applied(parse_policy({"quant": {"k_bits": 4, "recent_k": 8192, "recent_v": 128}}), Context(model))
    for side in "kv":
        with pytest.raises(PolicyError, match=f"recent_{side} = 9000 is beyond the model's context of 8192"):
            Applied(parse_policy({"quant": {"k_bits": 4, f"recent_{side}": 9000}}), Context(model))
    with pytest.raises(PolicyError, match="head_dim that is a multiple of 16"):
        Applied(parse_policy({"quant": {"k_bits": 4, "k_axis": "channel"}}), Context({"head_dim": 72}))
