"""``python -m builder pack``'s zip is a whole site: unpacked and served by Python's plain
``http.server`` (what its printed note and the README tell a teacher to run: no COOP/COEP,
no special MIME table), the page boots, with one thread, and generates the native ids."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile

from kvlab.engine import Request

from .conftest import wait_boot

POLICY = {"quant": {"k_bits": 4, "v_bits": 4}}


def test_the_packed_site_boots_from_a_plain_static_server(browser, dist, engine, tmp_path):
    from builder.pack import TOP, pack

    archive = pack(dist, tmp_path / "site.zip")
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "usb")
    root = tmp_path / "usb" / TOP
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        assert wait_boot(page) == "ready", page.text_content("#boot-error")
        info = page.evaluate("kvlab.info")
        assert info["crossOriginIsolated"] is False and info["threads"] == 1
        native = engine.generate(Request(prompt="A zip on a USB stick", max_new_tokens=6, policy=POLICY,
                                         ignore_eos=True))
        web = page.evaluate("o => kvlab.generate(o).catch(e => ({error: e.message}))",
                            {"prompt": "A zip on a USB stick", "maxNewTokens": 6, "policy": POLICY, "ignoreEos": True})
        assert web.get("ids") == native["ids"], web
        assert browser.blocked == []
    finally:
        page.close()
        server.shutdown()
        server.server_close()
