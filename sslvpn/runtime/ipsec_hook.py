"""The operator's ``--on-activate`` hook: run when this node takes an IPsec tunnel.

It points the VPC's route table at the node that now carries the tunnel (the cloud API call
in production, ``ip route replace`` in the tests). The command runs through ``sh -c`` with
the tunnel's facts in its environment, in a thread (never on the packet loop), in a process
group of its own that is killed when it overruns its time; a failure is logged, never raised:
the tunnel is up whatever the hook does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess

from sslvpn.store.ipsec_queries import TunnelConfig

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 30.0  # seconds the hook may take before it is killed
OUTPUT_TAIL = 500  # characters of its output quoted in the log


def hook_environment(config: TunnelConfig, node: str) -> dict[str, str]:
    """What the hook learns: the tunnel, the node, the CIDRs on each side (space separated)."""
    local = dict.fromkeys(cidr for cidr, _ in config.policies)
    peer = dict.fromkeys(cidr for _, cidr in config.policies)
    return {
        "SSLVPN_TUNNEL": config.name,
        "SSLVPN_GATEWAY": config.gateway,
        "SSLVPN_NODE": node,
        "SSLVPN_LOCAL_ADDRESS": config.local_address,
        "SSLVPN_PEER_ADDRESS": config.remote_address,
        "SSLVPN_LOCAL_CIDRS": " ".join(local),
        "SSLVPN_PEER_CIDRS": " ".join(peer),
    }


async def run_hook(command: str, environment: dict[str, str], *,
                   timeout: float = HOOK_TIMEOUT) -> bool:
    """Run ``command`` off the loop, bounded by ``timeout``; whether it exited 0."""
    return await asyncio.to_thread(_run, command, environment, timeout)


def _run(command: str, environment: dict[str, str], timeout: float) -> bool:
    what = f"on-activate hook for tunnel {environment.get('SSLVPN_TUNNEL')}"
    try:
        process = subprocess.Popen(  # noqa: S602 - the operator's own shell command
            command, shell=True, env={**os.environ, **environment}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        log.error("%s could not start: %s", what, exc)
        return False
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the shell and whatever it started
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        log.error("%s did not finish within %.0f s; killed", what, timeout)
        return False
    text = output.decode(errors="replace").strip()[-OUTPUT_TAIL:]
    if process.returncode != 0:
        log.error("%s failed (exit %d): %s", what, process.returncode, text or "(no output)")
        return False
    log.info("%s done%s", what, f": {text}" if text else "")
    return True
