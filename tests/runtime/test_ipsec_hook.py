"""The on-activate hook: bounded in time, its failure logged and never raised."""

from __future__ import annotations

import logging
import time

import pytest

from sslvpn.runtime.ipsec_hook import run_hook

ENV = {"SSLVPN_TUNNEL": "t1", "SSLVPN_NODE": "B"}


async def test_the_hook_sees_the_tunnel_and_its_success_is_reported() -> None:
    assert await run_hook('test "$SSLVPN_TUNNEL/$SSLVPN_NODE" = t1/B', ENV)


async def test_a_failing_hook_is_logged_with_its_output(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert not await run_hook("echo no route table here; exit 3", ENV)
    assert "on-activate hook for tunnel t1 failed (exit 3): no route table here" in caplog.text


async def test_a_hook_that_overruns_is_killed_with_what_it_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert not await run_hook("sleep 30 & sleep 30", ENV, timeout=0.5)
    assert time.monotonic() - started < 5  # the background sleep holds no pipe open
    assert "did not finish within" in caplog.text
