"""Render the static site from ``site/templates`` into ``dist/``.

Every file the page loads is written into ``dist/``: the site works with the network cut.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import paths

DIST = paths.REPO / "dist"
TEMPLATES = paths.REPO / "site" / "templates"


def build_site(bundle: Path, dist: Path = DIST) -> Path:
    import jinja2

    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((bundle / "config.json").read_text())
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    tmp = dist.with_name(dist.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    html = env.get_template("index.html").render(manifest=manifest, config=config)
    (tmp / "index.html").write_text(html)
    shutil.rmtree(dist, ignore_errors=True)
    tmp.rename(dist)
    print(f"builder: site rendered into {dist}", flush=True)
    return dist
