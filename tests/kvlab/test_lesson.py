"""Seed 004's live lesson (kvlab.lesson): the item as the engine reads it, one run's reading
(answer, digit origins, what the cache kept of each fact), the lessons file and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvlab import lesson
from kvlab.engine import InputError
from kvlab.policy import parse_policy

SPEC = {"task": "multi-needle", "context": 384, "seed": 1, "index": 0}


@pytest.fixture(scope="module")
def item(engine):
    return lesson.item(engine, SPEC)


def test_the_facts_are_found_in_the_engines_own_tokens(engine, item):
    """Every fact's digit tokens decode to exactly its code, its sentence's to the sentence;
    the asked key is one of the facts, the others are the rest, the question comes last."""
    from kvlab import tasks
    from kvlab.engine import Request

    ids = engine.prompt_ids(Request(prompt=item["prompt"], question=item["question"]))
    assert item["tokens"] == len(ids) and 0 < item["question_at"] < len(ids)
    dec = engine.tokenizer.decode
    assert [f["key"] for f in item["facts"] if f["asked"]] == [item["key"]]
    assert {f["key"]: f["code"] for f in item["facts"] if not f["asked"]} == item["others"]
    for f in item["facts"]:
        assert dec(ids[slice(*f["digits"])]).strip() == f["code"]
        assert tasks.CODE_SENTENCE.format(key=f["key"], code=f["code"]) in dec(ids[slice(*f["sentence"])])
        assert f["sentence"][1] <= item["question_at"]
    starts = [f["sentence"][0] for f in item["facts"]]
    assert starts == sorted(starts) and len(item["facts"]) > 2


def test_a_full_cache_run_reads_right(engine, item):
    """Under the full cache: the asked code answered, each digit's origin names the asked
    fact, every fact kept by every pair, no chunks report, the bytes the store holds."""
    run = lesson.read(engine, item, engine.generate(lesson.request(item, {})))
    assert run["correct"] and not run["crossover"] and run["digits"] == item["code"]
    assert all(item["key"] in o["facts"] for o in run["origin"])
    assert [o["digit"] for o in run["origin"]] == list(item["code"])
    assert all(f["kept"] == 1.0 and "routed" not in f for f in run["facts"])
    assert run["chunks"] is None and run["ratio_vs_fp32"] == 1.0
    assert run["result"]["cache_bytes"] == engine.meter()["cache_bytes"]
    assert run["result"]["prompt_ids"] == engine.prompt_ids(lesson.request(item, {}))
    assert run["map"]["tokens"] == run["result"]["tokens_cached"]


def test_a_chunks_run_reports_its_routing(profiled_engine, item):
    """Under chunks with k = 0 nothing is routed: a fact outside the sinks and recent tokens
    is marked not routed and kept by no pair (its chunk is one summary); the digits' origins
    are the facts whose code has that digit at that place, whatever the answer."""
    run = lesson.read(profiled_engine, item,
                      profiled_engine.generate(lesson.request(item, {"chunks": {"k": 0, "recent": 16, "chunk": 32}})))
    assert run["chunks"]["routed"] == [] and run["ratio_vs_fp32"] > 3
    early = [f for f in run["facts"] if f["digits"][1] < item["question_at"] - 16 and f["digits"][0] >= 4]
    assert early and all(f["routed"] is False and f["kept"] == 0.0 for f in early)
    for o in run["origin"]:
        assert o["facts"] == [f["key"] for f in item["facts"] if o["place"] < len(f["code"]) and f["code"][o["place"]] == o["digit"]]


@pytest.mark.parametrize("spec, words", [
    ({"task": "multi-hop", "context": 512}, "a lesson's task is one of"),
    ({"task": "needle", "context": 10}, "the item's context must be a whole number from 64"),
    ({"task": "needle", "context": 512, "index": -1}, "the item's index"),
    ({"task": "needle", "context": 512, "colour": 1}, "unknown item field 'colour'"),
    ("needle", "a lesson names its item as an object"),
])
def test_bad_items_are_refused(engine, spec, words):
    with pytest.raises(InputError, match=words):
        lesson.item(engine, spec)


def test_the_pages_lessons_are_valid():
    """lessons.json's lessons: known ids once each, items that pass the checks, policies
    that parse, a label and what to look at per run."""
    data = json.loads(lesson.lessons_file().read_text())
    ids = [les["id"] for les in data["lessons"]]
    assert ids and len(ids) == len(set(ids))
    for les in data["lessons"]:
        lesson.check_spec(les["item"], 8192)
        assert {"title", "idea", "claim", "runs"} <= set(les)
        for r in les["runs"]:
            parse_policy(r["policy"])
            assert r["label"] and r["look"]
    assert lesson.find(data["lessons"], ids[0])["id"] == ids[0]
    with pytest.raises(InputError, match="unknown lesson 'nope'; known: " + ids[0]):
        lesson.find(data["lessons"], "nope")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kvlab", "lesson", *args], capture_output=True, text=True, timeout=600)


def test_cli_runs_a_lesson_and_refuses_bad_ones(bundle, tmp_path):
    """`kvlab lesson ID --json`: one run per policy, in order; an unknown id or an
    unreadable lessons file is exit 2 with the reason, nothing run."""
    f = tmp_path / "lessons.json"
    runs = [{"label": "full", "policy": {}, "look": "-"}, {"label": "q8", "policy": {"quant": {"k_bits": 8, "v_bits": 8}}, "look": "-"}]
    f.write_text(json.dumps({"lessons": [{"id": "small", "item": SPEC, "runs": runs}]}))
    p = _cli("small", "--lessons", str(f), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["id"] == "small" and res["runs"][0]["policy"] == {}  # policies come back with their defaults
    assert {"k_bits": 8, "v_bits": 8}.items() <= res["runs"][1]["policy"]["quant"].items()
    assert res["runs"][0]["correct"] and res["runs"][1]["ratio_vs_fp32"] > 3
    p = _cli("nope", "--lessons", str(f))
    assert p.returncode == 2 and "unknown lesson 'nope'; known: small" in p.stderr
    p = _cli("small", "--lessons", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read the lessons" in p.stderr
    f.write_text(json.dumps({"lessons": [{"id": "bad", "item": SPEC, "runs": [{"policy": {"quant": {"k_bits": 5}}}]}]}))
    p = _cli("bad", "--lessons", str(f))
    assert p.returncode == 2 and "k_bits" in p.stderr
