"""The head profiler (``kvlab.profile``) and the observations (``kvlab.observe``), natively.

The profile's numbers are checked against an independent path: onnxruntime run directly
on the same tokens (no KV store, no profiler kernels), with NumPy computing the statistics
from the graph's raw outputs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kvlab.observe import observations
from kvlab.profile import FORMAT, ProfileError, ProfileStopped, Settings, profile
from kvlab.texts import profile_texts
from tests.reference import profile_ref as ref

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = Settings(context=128, queries=1, positions=2, quant_positions=8, budget=32)
SHAPES = {"kv_head": (30, 3), "q_head": (30, 9), "layer": (30,)}


@pytest.fixture(scope="module")
def texts():
    return profile_texts()


@pytest.fixture(scope="module")
def small(engine, texts):
    """One text, one query: every per-head statistic is that one query's."""
    return profile(engine, texts[:1], SMALL)


def test_the_profile_has_every_metric_in_its_shape_and_range(small, texts):
    assert small["format"] == FORMAT and small["host"] == "native"
    assert small["texts"][0]["sha256"] == texts[0]["sha256"] and small["texts"][0]["kind"] == "prose"
    m = small["metrics"]
    assert {"key_collapse", "value_collapse", "entropy", "recent_share", "sink_mass", "retrieval",
            "layer_sensitivity", "layer_entropy", "heavy_top1", "heavy_top5", "heavy_top20"} <= set(m)
    for name, metric in m.items():
        a = np.array(metric["values"], np.float64)
        assert a.shape == SHAPES[metric["per"]], name
        assert np.isfinite(a).all(), name
        if metric["unit"] == "share":
            assert (a >= 0).all() and (a <= 1 + 1e-5).all(), name
    ent = np.array(m["entropy"]["values"])
    assert (ent >= 0).all() and (ent <= math.log2(SMALL.context + 1) + 1e-4).all()
    heavy = [np.array(m[f"heavy_top{p}"]["values"]) for p in (1, 5, 20)]
    assert (heavy[0] <= heavy[1] + 1e-6).all() and (heavy[1] <= heavy[2] + 1e-6).all()
    assert small["retrieval_digits_copied"]["of"] == 4 * SMALL.facts
    assert len(small["candidates"]["collapsed_keys"]) == 90
    assert len(small["candidates"]["layers_cheapest_first"]) == 30


def test_reading_statistics_equal_onnxruntime_run_directly(small, host, engine, texts):
    """Prefill the first `context` tokens with an empty past, then one query with that past:
    its attention row gives entropy, recent share and sink mass; the prefill's keys give the
    collapse scores (one text: the per-text mean is the mean)."""
    c = host.config
    L, K, H, D = c["n_layers"], c["n_kv_heads"], c["n_heads"], c["head_dim"]
    ids = engine.tokenizer.encode(texts[0]["text"])[: SMALL.context + 1]
    n = SMALL.context

    def feeds(tokens, start, past):
        f = {"input_ids": np.array([tokens], np.int64),
             "position_ids": np.arange(start, start + len(tokens), dtype=np.int64)[None]}
        for i in range(L):
            k, v = past[i] if past else (np.zeros((1, K, 0, D), np.float32),) * 2
            f[f"past_key_values.{i}.key"], f[f"past_key_values.{i}.value"] = k, v
            f[f"past_mask.{i}"] = np.zeros((1, K, k.shape[2]), np.float32)
        return f

    names = [o.name for o in host.session.get_outputs()]
    out = dict(zip(names, host.session.run(None, feeds(ids[:n], 0, None))))
    past = [(out[f"new.{i}.key"], out[f"new.{i}.value"]) for i in range(L)]
    q = dict(zip(names, host.session.run(None, feeds([ids[n]], n, past))))

    m = small["metrics"]
    for i in range(L):
        attn = q[f"attn.{i}"][0].astype(np.float64)                    # (H, n + 1)
        np.testing.assert_allclose(m["entropy"]["values"][i], -np.log2((attn ** 2).sum(-1)), atol=2e-3)
        np.testing.assert_allclose(m["recent_share"]["values"][i], attn[:, -SMALL.recent:].sum(-1), atol=2e-4)
        np.testing.assert_allclose(m["sink_mass"]["values"][i], attn[:, :SMALL.sinks].sum(-1), atol=2e-4)
        for h in range(K):
            keys = ref.rope_unrotate(past[i][0][0, h], 0, c["rope_theta"])
            want = ref.moment_scores(ref.moments(keys)[None])[0]
            assert m["key_collapse"]["values"][i][h] == pytest.approx(want, abs=2e-4), (i, h)
            np.testing.assert_allclose(small["key_means"]["values"][i][h], keys.astype(np.float64).mean(0),
                                       rtol=1e-5, atol=1e-5 * np.abs(keys).max())  # the mu collapse stores against
            want_v = ref.moment_scores(ref.moments(past[i][1][0, h])[None])[0]
            assert m["value_collapse"]["values"][i][h] == pytest.approx(want_v, abs=2e-4), (i, h)


def test_values_do_not_collapse_and_keys_do(small):
    """Seed 000's finding, checked on this model (a property of the model, so it can fail)."""
    keys = np.array(small["metrics"]["key_collapse"]["values"])
    values = np.array(small["metrics"]["value_collapse"]["values"])
    assert keys.mean() > 2 * values.mean()


def test_cutting_a_layer_costs_something_and_quantized_keys_cost_more(small):
    sens = np.array(small["metrics"]["layer_sensitivity"]["values"])
    assert (sens >= 0).all() and sens.max() > 1e-4
    asym = small["quant_asymmetry_kl"]
    assert asym["k_only"] > asym["v_only"] > 0


def test_the_profile_leaves_the_engine_usable(engine, small):
    from kvlab.engine import Request

    assert engine.store.tokens(-1) == 0  # reset after profiling
    r = engine.generate(Request(prompt="Hello", max_new_tokens=2))
    assert r["tokens_cached"] == 2


def test_should_stop_ends_the_profile_and_resets_the_store(engine, texts):
    from kvlab.engine import Request

    seen = []
    with pytest.raises(ProfileStopped, match="stopped after 3 of"):
        profile(engine, texts[:1], SMALL, on_progress=seen.append, should_stop=lambda: len(seen) >= 3)
    assert engine.store.tokens(-1) == 0
    assert engine.generate(Request(prompt="Hello", max_new_tokens=2))["tokens_cached"] == 2


@pytest.mark.parametrize("bad, words", [
    (dict(context=0), "context"),
    (dict(queries=1.5), "queries"),
    (dict(sinks=64, budget=64), "sinks < budget"),
    (dict(quant_bits=3), "quant_bits"),
    (dict(context=8000, queries=300), "exceeds"),
])
def test_bad_settings_are_refused_before_any_run(engine, texts, bad, words):
    with pytest.raises(ProfileError, match=words):
        profile(engine, texts[:1], replace(SMALL, **bad))


def test_a_text_too_short_is_refused(engine):
    with pytest.raises(ProfileError, match="tokens"):
        profile(engine, [{"kind": "prose", "name": "tiny", "sha256": "0" * 64, "text": "Too short."}], SMALL)


def test_observations_say_what_the_profile_measured(small):
    obs = observations(small)
    assert [o["id"] for o in obs["observations"]] == ["recency", "kv_asymmetry", "heavy_hitters", "layer_entropy"]
    by = {o["id"]: o for o in obs["observations"]}
    rec = by["recency"]["measured"]["share_last_128"]
    assert rec == pytest.approx(np.mean(small["metrics"]["recent_share"]["values"]), abs=1e-6)
    assert f"{rec:.0%}" in by["recency"]["sentence"]
    assert by["kv_asymmetry"]["measured"]["k_only_kl"] == small["quant_asymmetry_kl"]["k_only"]
    ent = small["metrics"]["layer_entropy"]["values"]
    assert by["layer_entropy"]["measured"]["first_layer"] == ent[0]
    assert by["layer_entropy"]["seed"]["layer_entropy_bits"] == {"layer 1": 6.29, "layer 11": 1.84}


def test_cli_profile_and_observe(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "site"), str(ROOT)]))
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "kvlab", "profile", "--context", "128", "--queries", "2",
                        "--positions", "2", "--quant-positions", "2", "--out", str(out), "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(out.read_text())
    r = subprocess.run([sys.executable, "-m", "kvlab", "observe", "--profile", str(out)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "Attention is mostly recent" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kvlab", "profile", "--context", "0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "context" in r.stderr and r.stdout == ""
