"""Test settings: hypothesis runs derandomized under CI, so a red run is reproducible; every
test starts from fresh Dynamo caches (which also resets every backend's state), so no test
depends on the order."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def fresh_compile_state() -> None:
    # Earlier tests compile the same diffusers forward methods; without a reset a later test
    # can hit Dynamo's recompile limit and silently run eagerly.
    torch._dynamo.reset()
