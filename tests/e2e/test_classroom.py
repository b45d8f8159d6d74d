"""The page where the browser withholds features, as a classroom sees it.

- ``http://classroom.test:PORT/``: Chromium's ``--host-resolver-rules`` sends the name to
  loopback, so the page is served exactly as at a teacher's LAN address: NOT a secure context,
  hence no Cache API, no ``crypto.subtle`` and no cross-origin isolation (even though the
  server sends COOP/COEP). The page must boot, say so in one line each, hash every download
  with its own SHA-256, expand the weights into exactly model.onnx's fp16 bytes
  (``?verify=weights``) and generate the native host's ids.
- The no-isolation server on 127.0.0.1 (a secure context without COOP/COEP): one thread, the
  same ids.
- A corrupted weight part: a clear error naming the part; it is not kept, and a reload
  fetches it again and boots.
"""

from __future__ import annotations

import shutil
import tempfile
from urllib.parse import urlsplit

import pytest

from kvlab.engine import Request

from .conftest import CHROMIUM, wait_boot

HOST = "classroom.test"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        # the classroom's name goes to loopback; nothing else resolves (no DNS query leaves)
        f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
POLICY = {"quant": {"k_bits": 4, "v_bits": 4}}
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def chromium(playwright):
    profile = tempfile.mkdtemp(prefix="kvlab-classroom-")
    context = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                            args=ARGS, service_workers="block")
    seen, outside = [], []

    def guard(route):
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:", "about:")) or host in (HOST, "127.0.0.1"):
            seen.append(route.request.url)
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", guard)
    yield context, seen, outside
    context.close()
    shutil.rmtree(profile, ignore_errors=True)


def boot(page, url: str) -> str:
    page.goto(url)
    return wait_boot(page)


def same_as_native(page, engine) -> None:
    native = engine.generate(Request(prompt=PROMPT, max_new_tokens=8, policy=POLICY, ignore_eos=True))
    web = page.evaluate("o => kvlab.generate(o).catch(e => ({error: e.message}))",
                        {"prompt": PROMPT, "maxNewTokens": 8, "policy": POLICY, "ignoreEos": True})
    assert "error" not in web, web
    assert web["ids"] == native["ids"] and web["cache_bytes"] == native["cache_bytes"]


def test_boots_on_a_plain_http_classroom_address(chromium, base_url, engine):
    context, seen, outside = chromium
    port = urlsplit(base_url).port
    page = context.new_page()
    try:
        state = boot(page, f"http://{HOST}:{port}/?verify=weights")
        assert state == "ready", page.text_content("#boot-error")
        facts = page.evaluate("({secure: isSecureContext, subtle: !!globalThis.crypto?.subtle, "
                              "caches: typeof caches !== 'undefined', info: kvlab.info})")
        assert facts["secure"] is False and facts["subtle"] is False and facts["caches"] is False
        info = facts["info"]
        assert info["crossOriginIsolated"] is False and info["threads"] == 1
        assert info["weightsVerified"] is True  # 257 MB expanded, hashed by sha256.js, == model.onnx's
        assert info["modelFromCache"] is False
        notes = page.locator("#boot-notes li").all_text_contents()
        assert len(notes) == 2 and any("no Cache API" in n for n in notes) and any("one thread" in n for n in notes)
        same_as_native(page, engine)
        assert outside == []
        assert all(urlsplit(u).hostname == HOST for u in seen if u.startswith("http"))
    finally:
        page.close()


def test_boots_without_isolation(chromium, dist, engine):
    from builder.serve import start_in_thread

    context, _, outside = chromium
    server, url = start_in_thread(dist, isolate=False)
    page = context.new_page()
    try:
        assert boot(page, url + "/") == "ready", page.text_content("#boot-error")
        info = page.evaluate("kvlab.info")
        assert info["crossOriginIsolated"] is False and info["threads"] == 1
        assert len(info["notices"]) == 1 and "one thread" in info["notices"][0]
        same_as_native(page, engine)
        assert outside == []
    finally:
        page.close()
        server.shutdown()


def test_a_corrupted_weight_part_is_named_and_fetched_again(chromium, dist):
    """One part arrives with a flipped byte: the boot fails naming it, keeps nothing of it, and
    a reload (the server's copy is fine again) fetches it anew and boots. Then a damaged copy
    of it in the Cache API is noticed and replaced from the network."""
    import json

    from builder.serve import start_in_thread

    context, seen, _ = chromium
    part = json.loads((dist / "manifest.json").read_text())["weights"]["parts"][2]
    server, url = start_in_thread(dist, isolate=True)
    page = context.new_page()

    def corrupt(route):
        body = bytearray((dist / part["path"]).read_bytes())
        body[len(body) // 2] ^= 0x40
        route.fulfill(status=200, body=bytes(body), headers={"Content-Type": "application/octet-stream"})

    try:
        page.route(f"**/{part['path']}", corrupt)
        assert boot(page, url + "/") == "error"
        shown = page.text_content("#boot-error")
        assert part["path"] in shown and "corrupted" in shown and "reload" in shown
        kept = page.evaluate("p => caches.keys().then(ns => Promise.all(ns.map(n => caches.open(n)"
                             ".then(c => c.match(p))))).then(hits => hits.some(Boolean))", part["path"])
        assert kept is False
        page.unroute(f"**/{part['path']}")
        before = len(seen)
        page.reload()
        assert wait_boot(page) == "ready", page.text_content("#boot-error")
        assert any(u.endswith(part["path"]) for u in seen[before:])  # fetched again from the server

        # now every part is in the Cache API: damage the kept copy of one, and a reload
        # notices (its sha256), fetches that one again and takes the others from the cache
        page.evaluate("""async (p) => {
            for (const name of await caches.keys()) {
                const c = await caches.open(name);
                if (await c.match(p)) await c.put(p, new Response(new Uint8Array(1000)));
            }}""", part["path"])
        before = len(seen)
        page.reload()
        assert wait_boot(page) == "ready", page.text_content("#boot-error")
        fetched = [u for u in seen[before:] if "/model/weights-" in u]
        assert len(fetched) == 1 and fetched[0].endswith(part["path"])
        model = page.evaluate("kvlab.progress.model")
        assert model["fromCache"] == model["total"] - part["bytes"]
    finally:
        page.close()
        server.shutdown()


@pytest.mark.parametrize("body", ["{not json", '{"files": {}}'])
def test_a_damaged_manifest_is_said_in_words(chromium, base_url, body):
    context, _, _ = chromium
    page = context.new_page()
    try:
        page.route("**/manifest.json", lambda route: route.fulfill(status=200, body=body,
                                                                  headers={"Content-Type": "application/json"}))
        assert boot(page, base_url + "/") == "error"
        shown = page.text_content("#boot-error")
        assert "manifest.json" in shown and "rebuild or re-copy the site" in shown
    finally:
        page.close()
