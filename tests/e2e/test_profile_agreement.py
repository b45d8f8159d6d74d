"""The head profile computed in the page equals the builder's native one.

Both read the same texts (the builder's ``profile_texts.json``) through the same engine,
profiler and KV store binary; only the model runtime differs (onnxruntime natively,
onnxruntime-web in the page), so every metric must agree within float noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

#: every metric but the quantized ones: absolute, ~10x the largest difference measured
#: (2e-6: the runtimes' fp32 kernels differ in rounding only) — shares, cosines, bits, nats
ABS = 2e-5
KL_REL = 1e-3  # layer sensitivity: relative, plus ABS
#: K only / V only at 4 bits: rounding to 16 levels is discontinuous, so float noise of
#: ~1e-6 between runtimes moves some keys by a whole step. Measured natively, switching
#: onnxruntime's graph optimizations from "all" to "basic" (nothing else) moves the K-only
#: KL over 64 positions from 0.0366 to 0.0379 and the V-only KL from 0.00140 to 0.00125
#: (over 16 positions the K-only KL moved ~20 %, hence quant_positions = 64); the page
#: measured 0.0407 and 0.00143. So these agree loosely (~3x the 11 % seen), and the
#: observation itself (keys far more sensitive) is checked as a ratio.
QUANT_KL_REL = 0.3


@pytest.fixture(scope="module")
def both(browser, dist):
    native = json.loads((dist / "profile.json").read_text())
    live = browser.page.evaluate("() => kvlab.profile({}).catch(e => ({error: e.message}))")
    assert "error" not in live, live
    return native, live


def test_same_texts_settings_and_shapes(both):
    native, live = both
    assert live["host"] == "browser" and native["host"] == "native"
    assert live["texts"] == native["texts"] and live["settings"] == native["settings"]
    assert live["metrics"].keys() == native["metrics"].keys()
    assert live["retrieval_digits_copied"] == native["retrieval_digits_copied"]
    assert [o["id"] for o in live["observations"]["observations"]] == [
        "recency", "kv_asymmetry", "heavy_hitters", "layer_entropy"]
    print(f"\nprofile: native {native['seconds']} s, browser {live['seconds']} s")


def test_every_metric_agrees(both):
    native, live = both
    worst = {}
    for name, metric in native["metrics"].items():
        a = np.array(metric["values"], np.float64)
        b = np.array(live["metrics"][name]["values"], np.float64)
        worst[name] = float(np.abs(a - b).max())
    print("\nlargest |native - browser| per metric:\n" + "\n".join(f"  {k}: {v:.2e}" for k, v in worst.items()))
    for name, w in worst.items():
        if name != "layer_sensitivity":
            assert w <= ABS, (name, w)
    mu_n, mu_b = np.array(native["key_means"]["values"]), np.array(live["key_means"]["values"])
    assert np.abs(mu_n - mu_b).max() <= ABS * max(1.0, np.abs(mu_n).max())  # collapse's mean keys too
    a = np.array(native["metrics"]["layer_sensitivity"]["values"])
    b = np.array(live["metrics"]["layer_sensitivity"]["values"])
    np.testing.assert_allclose(b, a, rtol=KL_REL, atol=ABS)
    print("K only / V only KL: native", native["quant_asymmetry_kl"], "browser", live["quant_asymmetry_kl"])
    for k in ("k_only", "v_only"):
        assert live["quant_asymmetry_kl"][k] == pytest.approx(native["quant_asymmetry_kl"][k], rel=QUANT_KL_REL)
    for p in (native, live):
        assert p["quant_asymmetry_kl"]["k_only"] > 10 * p["quant_asymmetry_kl"]["v_only"]


def test_ranked_candidates_agree_at_the_top(both):
    native, live = both
    for lst, key in (("collapsed_keys", "kv_head"), ("retrieval_heads", "q_head")):
        top = lambda p: [(c["layer"], c[key]) for c in p["candidates"][lst][:5]]  # noqa: E731
        assert len(set(top(native)) & set(top(live))) >= 4, lst


def test_stop_ends_a_profile_and_the_page_stays_usable(browser):
    res = browser.page.evaluate("""() => new Promise((resolve) => {
        let asked = false;
        const onp = (e) => { if (!asked && e.detail.done >= 3) { asked = true; kvlab.stop(); } };
        window.addEventListener("kvlab:profile-progress", onp);
        kvlab.profile({}).then(() => resolve({ok: true}), (e) => resolve({error: e.message, kind: e.kind}))
          .finally(() => window.removeEventListener("kvlab:profile-progress", onp));
    })""")
    assert res.get("kind") == "stopped" and "stopped after 3 of" in res["error"], res
    r = browser.generate(prompt="Hello", maxNewTokens=2)
    assert "error" not in r and r["tokens_cached"] == 2  # the profile left nothing in the store


def test_bad_profile_options_are_refused_and_the_page_stays_usable(browser):
    err = browser.page.evaluate("() => kvlab.profile({nope: 1}).then(() => null, e => e.message)")
    assert "unknown option 'nope'" in err
    err = browser.page.evaluate("() => kvlab.profile({context: 0}).then(() => null, e => e.message)")
    assert "context" in err
    r = browser.generate(prompt="Hello", maxNewTokens=2)
    assert "error" not in r and len(r["ids"]) == 2
