"""entropy_bits (seed 002): bits per KV head from the profile's Rényi-2 entropy, within the
bytes of a uniform width; the store holds each head in its own format."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kvlab import formats
from kvlab.engine import Request
from kvlab.policy import Applied, Context, parse_policy
from kvlab.techniques import REGISTRY, PolicyError
from kvlab.techniques.entropy_bits import allocate


def row(b: int) -> int:
    return formats.row_bytes(formats.from_bits(b), 32, 64)


def random_entropy(seed: int, layers: int = 30, heads: int = 3) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 1.4, (layers, heads)) + 0.3).round(6).tolist()


@pytest.mark.parametrize("seed,bits,alpha,skip",
                         list(itertools.product(range(4), (3, 4, 8), (0.0, 0.25, 1.0), (0.0, 0.02, 0.1))))
def test_allocation_holds_the_budget_and_follows_the_entropy(seed, bits, alpha, skip):
    """Never more bytes than uniform b_avg; the skipped heads are the lowest-entropy ones
    at 16 bits; among the others a lower entropy never gets fewer bits; and no single raise
    of a head still below its target would have fit in what is left."""
    E = random_entropy(seed)
    flat = [(E[layer][k], (layer, k)) for layer in range(30) for k in range(3)]
    try:
        a = allocate(E, bits, alpha, skip, 32, 64)
    except PolicyError as e:  # the 16-bit heads alone beyond the budget: said, not hidden
        assert "already hold more than uniform" in str(e)
        n16 = round(skip * 90)
        assert n16 * row(16) + (90 - n16) * row(2) > 90 * row(bits)
        return
    used = sum(row(b) for r in a for b in r)
    assert used <= 90 * row(bits)
    skipped = {x for _, x in sorted(flat)[: round(skip * 90)]}
    assert {(layer, k) for layer in range(30) for k in range(3) if a[layer][k] == 16} == skipped
    rest = sorted((h, a[x[0]][x[1]]) for h, x in flat if x not in skipped)
    assert all(b1 >= b2 for (_, b1), (_, b2) in zip(rest, rest[1:]))
    h_avg = sum(h for h, _ in flat) / 90
    widths = (2, 3, 4, 8)
    for h, x in flat:
        b = a[x[0]][x[1]]
        if x in skipped or b == 8:
            continue
        t = bits + alpha * (h_avg - h)
        nb = widths[widths.index(b) + 1]
        if abs(nb - t) < abs(b - t):  # a raise that helps must not have fitted
            assert row(nb) - row(b) > 90 * row(bits) - used, (x, b, t)


def test_without_the_budget_each_head_takes_its_nearest_width():
    E = random_entropy(9)
    a = allocate(E, 4, 0.25, 0.0, 32, 64, match_bytes=False)
    h_avg = float(np.mean(E))
    for layer, k in itertools.product(range(30), range(3)):
        t = 4 + 0.25 * (h_avg - E[layer][k])
        assert a[layer][k] == min((2, 3, 4, 8), key=lambda b: (abs(b - t), -b))
    skip_only = allocate(E, 4, 0.0, 0.02, 32, 64, match_bytes=False)
    assert sorted(b for r in skip_only for b in r) == [4] * 88 + [16] * 2


def test_the_store_holds_each_head_in_its_width(profiled_engine):
    """Through the engine: every (layer, KV head) in the format the allocation gave it, and
    the cache's bytes are those rows (equal to uniform q4's here, to the byte)."""
    engine = profiled_engine
    pol = {"entropy_bits": {"bits": 4}}
    res = engine.generate(Request(prompt="Focused heads get more bits than diffuse ones.", max_new_tokens=4,
                                  ignore_eos=True, policy=pol))
    applied = engine.apply(pol)
    alloc = REGISTRY["entropy_bits"].allocation(applied.policy["entropy_bits"], applied.ctx)
    store = engine.store
    for layer, k in itertools.product(range(30), range(3)):
        f = formats.from_bits(alloc[layer][k])
        assert store.head_format(layer, k, 0) == store.head_format(layer, k, 1) == f
    tokens = res["tokens_cached"]
    assert res["cache_bytes"] == tokens * 2 * sum(row(b) for r in alloc for b in r)
    assert res["cache_bytes"] == tokens * 2 * 90 * row(4)  # the budget is met exactly on this profile
    assert sorted(b for r in alloc for b in r).count(16) == 2  # 2 % of 90 heads


def test_bad_settings_are_refused(profiled_engine):
    model = profiled_engine.config
    with pytest.raises(PolicyError, match="entropy_bits needs the head profile"):
        Applied(parse_policy({"entropy_bits": {}}), Context(model, None))
    with pytest.raises(PolicyError, match="quant may set only"):
        parse_policy({"entropy_bits": {}, "quant": {"k_bits": 4}})
    parse_policy({"entropy_bits": {}, "quant": {"recent_k": 64, "rotate": True}})  # these compose
    with pytest.raises(PolicyError, match="retrieval must be at most 90"):
        Applied(parse_policy({"entropy_bits": {"retrieval": 91}}), Context(model, profiled_engine.profile))
    with pytest.raises(PolicyError, match="entropy_bits.bits must be one of"):
        parse_policy({"entropy_bits": {"bits": 5}})
    with pytest.raises(PolicyError, match="already hold more than uniform 2 bits"):  # before the store is touched
        Applied(parse_policy({"entropy_bits": {"bits": 2}}), Context(model, profiled_engine.profile))
