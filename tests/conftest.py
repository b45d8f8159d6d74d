"""Shared fixtures: the built artifacts, a native host and engine (built once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundle():
    """The artifact bundle (model, tokenizer, stores), built by the builder if needed."""
    from builder.__main__ import build_all

    return build_all()


@pytest.fixture(scope="session")
def host(bundle):
    from kvlab.host.native import NativeHost

    return NativeHost(bundle)


@pytest.fixture(scope="session")
def engine(host):
    from kvlab.engine import Engine

    return Engine(host)


@pytest.fixture(scope="session")
def head_profile(bundle):
    """The builder's head profile (built natively if not cached, ~40 s)."""
    import json

    from builder.profile import build_profile

    return json.loads((build_profile(bundle) / "profile.json").read_text())


@pytest.fixture(scope="session")
def profiled_engine(engine, head_profile):
    """The engine with the head profile that pyramidkv (entropy), compresskv and duo read."""
    engine.profile = head_profile
    return engine
