"""End-to-end fixtures: the built site, served on 127.0.0.1, in headless Chromium.

One browser, one persistent profile (so the Cache API survives a reload as it would for a
visitor) and one page that boots once and is shared by the tests: a boot costs ~20 s.
Every request of the context passes a guard that lets only 127.0.0.1 through and records
the rest; tests assert that list stays empty. On a failure the page's screenshot, console
and errors are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("KVLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # below Playwright's guard: no host name but 127.0.0.1 resolves at all (no DNS query leaves)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
BOOT_TIMEOUT_MS = 180_000


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: drives the built site in headless Chromium (Playwright)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def is_local(url: str) -> bool:
    u = urlsplit(url)
    return u.scheme in ("data", "blob", "about") or u.hostname == "127.0.0.1"


def wait_boot(page) -> str:
    """Wait until the page's start-up ends; returns data-state ("ready" or "error")."""
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                           timeout=BOOT_TIMEOUT_MS, polling=200)
    return page.evaluate("document.body.dataset.state")


# ---- the site and its server --------------------------------------------------------------

@pytest.fixture(scope="session")
def dist(bundle):
    from builder.site import build_site

    return build_site(bundle)


@pytest.fixture(scope="session")
def base_url(dist):
    from builder.serve import start_in_thread

    server, url = start_in_thread(dist)
    yield url
    server.shutdown()


# ---- the browser --------------------------------------------------------------------------

class Browser:
    """The context, the shared page and what the guard and the listeners saw."""

    def __init__(self, context, base_url):
        self.context, self.base_url = context, base_url
        self.blocked: list[str] = []  # requests the guard refused (must stay empty)
        self.requests: list[str] = []  # every URL asked for, in order
        self.logs: list[str] = []  # console messages and page errors
        context.route("**/*", self._guard)
        context.on("request", lambda r: self.requests.append(r.url))
        self.page = context.pages[0] if context.pages else context.new_page()
        self.page.on("console", lambda m: self.logs.append(f"[{m.type}] {m.text}"))
        self.page.on("pageerror", lambda e: self.logs.append(f"[pageerror] {e}"))

    def _guard(self, route):
        if is_local(route.request.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def open(self):
        """Load the page and wait for data-state ready (or error, which fails at once)."""
        self.page.goto(self.base_url + "/")
        self.wait_ready()

    def wait_ready(self):
        if wait_boot(self.page) != "ready":
            err = self.page.evaluate("document.getElementById('boot-error')?.textContent")
            raise AssertionError(f"the page did not boot: {err}")

    def save(self, name: str) -> None:
        """Screenshot + console log + page errors + blocked requests into test-artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception as e:  # the page may be gone; the log still helps
            self.logs.append(f"[screenshot failed] {e}")
        (ARTIFACTS / f"{name}.console.txt").write_text(
            "\n".join(self.logs + [f"[blocked] {u}" for u in self.blocked]) + "\n", encoding="utf-8"
        )

    def generate(self, **opts):
        """window.kvlab.generate(opts) → the result, or {"error": message} if it rejected."""
        return self.page.evaluate(
            "opts => kvlab.generate(opts).catch(e => ({error: e.message}))", opts
        )


@pytest.fixture(scope="session")
def playwright():
    """One Playwright for the session (its sync API cannot be started twice at once)."""
    # under CI the page is what is tested: a missing browser fails the run, never skips it
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    try:
        import playwright.sync_api as pw_api
    except ImportError:
        missing("Playwright is not installed (pip install -r requirements.lock)")
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set KVLAB_CHROMIUM)")
    with pw_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright, base_url):
    profile = tempfile.mkdtemp(prefix="kvlab-e2e-profile-")
    # a persistent (on-disk) profile: what a visitor has, and the Cache API outlives a reload
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=ARGS, service_workers="block",
    )
    b = Browser(context, base_url)
    try:
        b.open()
    except Exception:
        b.save("boot")
        raise
    yield b
    context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def keep_artifacts_on_failure(request):
    """After a failed e2e test: screenshot + console log into test-artifacts/."""
    yield
    if "browser" not in request.fixturenames:
        return
    failed = any(getattr(request.node, f"rep_{w}", None) and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    if not failed:
        return
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    request.getfixturevalue("browser").save(name)
