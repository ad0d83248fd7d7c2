"""`sslvpn` with its stateless reset limiter opened up, for the scale phase only.

Both servers limit replies to new clients' first packets to 100 per 10 s (OpenVPN's
``connect-freq-initial`` default, mirrored by our acceptor), so a burst of 1,000 handshakes
would measure that limiter, not handshake capacity. OpenVPN gets ``--connect-freq-initial``
raised on its command line; our runtime has no such option yet, so this launcher swaps in an
``AcceptorConfig`` whose default rate is as high, then runs the normal CLI.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.vpn import RESET_RATE
from sslvpn.cli import main
from sslvpn.openvpn import server


@dataclass(frozen=True)
class _UnlimitedAcceptorConfig(server.AcceptorConfig):
    reset_rate: int = RESET_RATE


def _patch() -> int:
    """Every module that imported ``AcceptorConfig`` by name gets the unlimited one."""
    original, patched = server.AcceptorConfig, 0
    for module in list(sys.modules.values()):
        if getattr(module, "AcceptorConfig", None) is original:
            setattr(module, "AcceptorConfig", _UnlimitedAcceptorConfig)  # noqa: B010
            patched += 1
    return patched


if __name__ == "__main__":
    if _patch() < 2:  # the core's own module plus at least one runtime user
        sys.exit("bench.unlimited_serve: no runtime module uses AcceptorConfig any more")
    main()
