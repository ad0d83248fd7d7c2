"""The gateway's local control socket: ``GatewayControl`` for other processes on the host.

A unix stream socket (mode 0600, in the data folder) carrying one JSON request line and one
JSON response line per connection. ``ControlServer`` answers from the running gateway;
``ControlClient`` is the synchronous client the CLI (``sslvpn sessions``, ``sslvpn kick``)
and a portal in another process use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sslvpn.runtime.control import (
    GatewayControl,
    GatewayCounters,
    ListenerStatus,
    SessionInfo,
    TrafficSample,
    TunnelStatus,
)

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 10.0


class ControlError(RuntimeError):
    """The gateway could not be reached or refused the request."""


class KickingControl(GatewayControl, Protocol):
    """GatewayControl plus disconnecting every session of a user, and the counters a
    metrics scrape reads (the supervisor of `serve --workers` scrapes each worker's)."""

    def kick_user(self, user: str, reason: str = "kicked by admin") -> int: ...

    def counters(self) -> GatewayCounters: ...


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _encode(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _decode_times(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if row.get(name) is not None:
            row[name] = datetime.fromisoformat(row[name])
    return row


class ControlServer:
    """Serves a ``KickingControl`` (the gateway) on a unix socket."""

    def __init__(self, control: KickingControl, path: Path) -> None:
        self._control = control
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
            try:
                response = self.handle(json.loads(line[:MAX_REQUEST]))
            except (ValueError, KeyError, TypeError) as exc:
                response = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one decoded request."""
        control = self._control
        op = request["op"]
        reason = str(request.get("reason") or "kicked by admin")
        if op == "sessions":
            return {"ok": True, "sessions": [_encode(s) for s in control.list_sessions()]}
        if op == "kick":
            return {"ok": True, "count": int(control.kick(str(request["session_id"]), reason))}
        if op == "kick_user":
            return {"ok": True, "count": control.kick_user(str(request["user"]), reason)}
        if op == "kick_certificate":
            reason = str(request.get("reason") or "certificate revoked")
            return {"ok": True, "count": control.kick_certificate(str(request["serial"]), reason)}
        if op == "traffic":
            return {"ok": True, "traffic": _encode(control.traffic())}
        if op == "counters":
            return {"ok": True, "counters": _encode(control.counters())}
        if op == "listeners":
            return {"ok": True, "listeners": _encode(control.listener_status())}
        if op == "access_hits":
            return {"ok": True, "hits": control.access_hits()}
        if op == "tunnels":
            return {"ok": True, "tunnels": [_encode(t) for t in control.tunnel_status()]}
        if op == "tunnel_action":
            try:
                done = control.tunnel_action(str(request["name"]), str(request["action"]))
            except ValueError as exc:  # not running, not up, unknown action: say which
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "message": done}
        return {"ok": False, "error": f"unknown op {op!r}"}


class ControlClient:
    """``GatewayControl`` over the control socket of a gateway running on this host."""

    def __init__(self, path: Path, *, timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def _call(self, **request: Any) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no gateway running (no control socket at {self.path})") from None
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc.strerror or exc}") from None
        try:
            response: dict[str, Any] = json.loads(data)
        except ValueError:
            raise ControlError("the gateway sent an unreadable answer") from None
        if not response.get("ok"):
            raise ControlError(str(response.get("error", "request refused")))
        return response

    def list_sessions(self) -> list[SessionInfo]:
        rows = self._call(op="sessions")["sessions"]
        return [SessionInfo(**_decode_times(r, "connected_at", "last_activity")) for r in rows]

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        return bool(self._call(op="kick", session_id=session_id, reason=reason)["count"])

    def kick_user(self, user: str, reason: str = "kicked by admin") -> int:
        return int(self._call(op="kick_user", user=user, reason=reason)["count"])

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        return int(self._call(op="kick_certificate", serial=serial, reason=reason)["count"])

    def traffic(self) -> TrafficSample:
        return TrafficSample(**_decode_times(self._call(op="traffic")["traffic"], "at"))

    def tunnel_status(self) -> list[TunnelStatus]:
        rows = self._call(op="tunnels")["tunnels"]
        return [TunnelStatus(**_decode_times(r, "established_at")) for r in rows]

    def listener_status(self) -> ListenerStatus:
        return ListenerStatus(**self._call(op="listeners")["listeners"])

    def counters(self) -> GatewayCounters:
        return GatewayCounters(**self._call(op="counters")["counters"])

    def access_hits(self) -> list[tuple[str, bool, int]]:
        return [(str(rule), bool(allow), int(packets))
                for rule, allow, packets in self._call(op="access_hits")["hits"]]

    def tunnel_action(self, name: str, action: str) -> str:
        """Raises ControlError with the gateway's reason when it refuses."""
        return str(self._call(op="tunnel_action", name=name, action=action)["message"])
