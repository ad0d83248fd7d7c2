"""Client versions from peer-info: how they compare and what "older than" keeps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sslvpn.runtime.control import (
    SessionInfo,
    client_summary,
    older_clients,
    older_than,
    parse_threshold,
    version_key,
)


def _session(version: str | None, platform: str | None = None,
             gui: str | None = None) -> SessionInfo:
    return SessionInfo("s", "alice", "a1", "phone", "198.18.0.2:5000", "10.8.0.2", "udp",
                       datetime(2026, 12, 7, tzinfo=UTC), None, 0, 0, client_version=version,
                       client_platform=platform, client_gui=gui)


@pytest.mark.parametrize(("text", "key"), [
    ("2.4.12", (2, 4, 12)), ("2.6", (2, 6, 0)), ("2.6_git", (2, 6, 0)),
    ("2.7_beta1", (2, 7, 0)), ("3.12_git:master", (3, 12, 0)), ("3.8.4", (3, 8, 4)),
    ("", None), (None, None), ("unknown", None), ("v2.6", None),
])
def test_version_key_reads_what_clients_send(text: str | None, key: object) -> None:
    assert version_key(text) == key


def test_older_than_counts_unknown_versions_as_old() -> None:
    threshold = parse_threshold("2.5")
    assert older_than(_session("2.4.12"), threshold)
    assert not older_than(_session("2.5"), threshold)
    assert not older_than(_session("3.10"), threshold)  # OpenVPN 3 (Connect)
    assert older_than(_session(None), threshold)  # said nothing: cannot be counted on
    sessions = [_session("2.4.12"), _session("2.6.14"), _session(None)]
    assert [s.client_version for s in older_clients(sessions, "2.6")] == ["2.4.12", None]
    assert older_clients(sessions, None) == sessions


@pytest.mark.parametrize("text", ["", "two", "2.", "2.6.1.1", "12345", "2.6 beta", "-1"])
def test_thresholds_must_be_versions(text: str) -> None:
    with pytest.raises(ValueError, match="is not a version"):
        parse_threshold(text)
    with pytest.raises(ValueError):
        older_clients([], text)


def test_summary_for_tables() -> None:
    assert client_summary(_session("2.6.14", "linux")) == "2.6.14 linux"
    assert client_summary(_session("3.10", "ios", "net.openvpn.connect.ios_3.5")) == (
        "3.10 ios (net.openvpn.connect.ios_3.5)")
    assert client_summary(_session(None, None, "gui")) == "(gui)"
    assert client_summary(_session(None)) == "-"
