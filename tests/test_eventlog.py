"""--log-format json: each event is one JSON line with its fields, and secrets never show."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sslvpn.eventlog import REDACTED, fields, make_handler
from sslvpn.store import db, queries
from sslvpn.store.db import open_engine, upgrade
from tests.ipsec.test_esp_tunnel_driver import Lab
from tests.runtime.fakes import ipv4
from tests.runtime.test_gateway import VPC_HOST, Harness


@contextlib.contextmanager
def captured(logger: str, node: str | None = "n1") -> Iterator[list[dict[str, Any]]]:
    """What ``logger`` logs inside the block, as the JSON format writes it, parsed."""
    stream = io.StringIO()
    handler = make_handler("json", node=node, stream=stream)
    target = logging.getLogger(logger)
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.setLevel(logging.NOTSET)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == name]


async def test_sessions_and_refusals_are_events_with_their_fields() -> None:
    with captured("sslvpn.runtime.gateway") as lines:
        h = await Harness.started()
        h.policy.add("a1", "alice")
        h.policy.add("b2", "bob", status="revoked")
        client, _ = await h.connect("a1")
        assert client.driver is not None
        packet = ipv4("10.8.0.2", VPC_HOST)
        client.driver.feed(packet)
        await h.connect("b2")
        h.gateway.kick(client.session_id)
    assert all({"timestamp", "level", "logger", "node", "event", "message"} <= set(line)
               for line in lines)
    [connected] = events(lines, "session.connected")
    assert connected["node"] == "n1" and connected["level"] == "INFO"
    assert {k: connected[k] for k in ("user", "device", "vpn_address", "real_address")} == {
        "user": "alice", "device": "laptop", "vpn_address": "10.8.0.2",
        "real_address": "198.18.0.2:1000"}
    [ended] = events(lines, "session.disconnected")
    assert (ended["user"], ended["reason"], ended["bytes_in"], ended["bytes_out"]) == (
        "alice", "kicked by admin", len(packet), 0)
    assert isinstance(ended["duration_seconds"], float) and ended["duration_seconds"] >= 0
    [refused] = events(lines, "handshake.refused")
    assert (refused["user"], refused["reason"], refused["result"]) == (
        "bob", "certificate revoked", "revoked")


def test_an_audit_entry_is_logged_once_committed_and_never_when_rolled_back(
        tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    try:
        with captured("sslvpn.store.queries", node=None) as lines:
            with db.session(engine, write=True) as s:
                queries.record_audit(s, actor="root", action="user.add", target="alice",
                                     source_address="198.18.0.9")
            with pytest.raises(RuntimeError), db.session(engine, write=True) as s:
                queries.record_audit(s, actor="root", action="user.delete", target="alice")
                raise RuntimeError("changed my mind")
    finally:
        engine.dispose()
    assert [(line["event"], line["action"], line["actor"], line["source_address"])
            for line in lines] == [("admin.action", "user.add", "root", "198.18.0.9")]


def test_a_tunnel_state_change_is_an_event() -> None:
    with captured("sslvpn.runtime.ipsec_tunnel") as lines:
        Lab(initiate=True)  # starts: down -> connecting
    assert [(c["tunnel"], c["previous_state"], c["state"]) for c in events(lines, "tunnel.state")
            ] == [("t1", "down", "connecting")]


def test_fields_named_like_secrets_are_redacted_in_both_formats() -> None:
    for log_format in ("json", "text"):
        stream = io.StringIO()
        handler = make_handler(log_format, node=None, stream=stream)
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello %s", ("x",), None)
        for name, value in fields("test", psk="pre-shared-0123", password="pw-0123",
                                  ca_passphrase="pass-0123", api_token="tok-0123",
                                  user="alice").items():
            setattr(record, name, value)
        handler.handle(record)
        out = stream.getvalue()
        assert "0123" not in out, out
        if log_format == "json":
            line = json.loads(out)
            assert line["psk"] == line["password"] == REDACTED and line["user"] == "alice"
