"""A short soak in CI (the full one is `python bench/soak.py`): concurrent clients, random cancels."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_short_soak(light_engine, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import soak

    monkeypatch.setattr("krishna_ai.studio.service.load_engine", lambda spec, adapter: light_engine)
    out = soak.run(clients=4, seconds=20, max_new=8, cancel_rate=0.4, seed=1)
    assert out["requests"] >= 4 and out["completed"] >= 1
    assert out["failed"] == 0, out["errors"]
    assert out["generate_threads_left"] == 0
    assert out["checks"]["fair queue (every client >= half the mean)"], out["per_client"]
