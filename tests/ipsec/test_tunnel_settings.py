"""The stored tunnel timers start from the core's defaults (the store may not import the
IPsec core, so the model repeats them; this keeps the two copies equal)."""

from __future__ import annotations

import pytest

from sslvpn.ipsec.ike.config import IkeConfig
from sslvpn.ipsec.ike.fragments import FRAGMENT_MESSAGE_SIZE
from sslvpn.ipsec.policy import PolicyError
from sslvpn.ipsec.tunnel_settings import TunnelSettings
from sslvpn.store.models import VpnTunnel


def test_a_new_tunnel_row_has_the_core_default_timers() -> None:
    row = VpnTunnel(name="t", gateway_id=1, customer_gateway_id=1, psk="k")
    defaults = TunnelSettings()
    assert {name: getattr(row, name) for name in TunnelSettings.names()} == defaults.as_dict()


def test_the_fragment_size_is_a_datagram_and_the_core_gets_the_message_inside_it() -> None:
    """1280 (strongSwan's charon.fragment_size, in IP datagram bytes) is what the core used
    before it was a setting; a smaller one leaves room for IPv6, UDP and the non-ESP marker."""
    assert TunnelSettings().ike_timers()["fragment_size"] == FRAGMENT_MESSAGE_SIZE
    small = TunnelSettings().changed(fragment_size="576")
    assert small.ike_timers()["fragment_size"] == 576 - 40 - 8 - 4
    assert IkeConfig.build(local_id="a.lab", remote_id=None, psk=b"k" * 20,
                           ike_proposals="default", esp_proposals="default", local_ts=[],
                           remote_ts=[], **small.ike_timers()).fragment_size == 524
    for bad in ("219", "65536", "0", "many"):
        with pytest.raises(PolicyError, match="fragment size must be"):
            TunnelSettings().changed(fragment_size=bad)
