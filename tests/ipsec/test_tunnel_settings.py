"""The stored tunnel timers start from the core's defaults (the store may not import the
IPsec core, so the model repeats them; this keeps the two copies equal)."""

from __future__ import annotations

from sslvpn.ipsec.tunnel_settings import TunnelSettings
from sslvpn.store.models import VpnTunnel


def test_a_new_tunnel_row_has_the_core_default_timers() -> None:
    row = VpnTunnel(name="t", gateway_id=1, customer_gateway_id=1, psk="k")
    defaults = TunnelSettings()
    assert {name: getattr(row, name) for name in TunnelSettings.names()} == defaults.as_dict()
