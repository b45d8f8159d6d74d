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
