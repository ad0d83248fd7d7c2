"""The customer gateway's configuration rendered from a tunnel: every format, every field
from the tunnel's model, the PSK only when asked, proposal strings each peer parses.

swanctl.conf is loaded by a real charon in the interop tests; Libreswan cannot be installed
beside strongSwan here, so its proposal strings below were checked once with Libreswan
4.10's own parser (``algparse``) and its ``addconn --checkconfig``, and are pinned."""

from __future__ import annotations

import re

import pytest

from sslvpn.ipsec.peer_config import FORMATS, PeerTunnel, file_name, render
from sslvpn.ipsec.tunnel_settings import TunnelSettings

PSK = "peer-config-psk-0123456789abcdef"


def tunnel(**changes: object) -> PeerTunnel:
    base: dict[str, object] = dict(
        name="dc1-tun", peer_address="198.51.100.7",
        gateway_addresses=("203.0.113.10", "203.0.113.11"), psk=PSK,
        ike_proposals="default", esp_proposals="default", start_action="initiate",
        peer_networks=("10.99.0.0/16",), our_networks=("10.20.0.0/16", "10.21.0.0/16"),
        settings=TunnelSettings().changed(dpd_delay="10s", ike_lifetime="4h",
                                          child_lifetime="1h", rekey_margin="5m",
                                          rekey_fuzz="50"))
    base.update(changes)
    return PeerTunnel(**base)  # type: ignore[arg-type]


def _blocks_balance(text: str) -> None:
    depth = 0
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        depth += line.count("{") - line.count("}")
        assert depth >= 0, line
    assert depth == 0


def test_swanctl_has_every_field_from_the_peers_side() -> None:
    text = render(tunnel(), "swanctl")
    _blocks_balance(text)
    settings = dict(re.findall(r"^\s+(\w+) = (.+)$", text, re.M))
    assert settings["local_addrs"] == "198.51.100.7"
    assert settings["remote_addrs"] == "203.0.113.10, 203.0.113.11"  # every fleet node
    assert re.search(r"remote \{\n\s+auth = psk\n\s+id = 203.0.113.10\n", text)
    assert re.search(r"local \{\n\s+auth = psk\n\s+id = 198.51.100.7\n", text)
    assert settings["local_ts"] == "10.99.0.0/16"
    assert settings["remote_ts"] == "10.20.0.0/16, 10.21.0.0/16"
    assert settings["proposals"].startswith("aes256gcm16-aes128gcm16-prfsha512")
    assert "sha1" not in settings["proposals"] and "modp1024" not in settings["proposals"]
    assert settings["esp_proposals"].split(",")[0] == "aes256gcm16-aes128gcm16"
    # 4h lifetime, 5m margin, 50 % fuzz: rekey at 3h55m minus up to 2m30s
    assert re.findall(r"rekey_time = (\S+)", text) == ["235m", "55m"]  # IKE SA, CHILD_SA
    assert settings["over_time"] == "5m" and settings["rand_time"] == "150s"
    assert (settings["life_time"], settings["dpd_delay"], settings["dpd_action"]) == (
        "1h", "10s", "restart")
    assert settings["start_action"] == "none"  # we initiate: the peer waits
    assert PSK not in text and "# secrets {" in text


def test_the_psk_only_when_asked_and_hex_when_quotes_would_break() -> None:
    with_psk = render(tunnel(), "swanctl", include_psk=True)
    assert f'secret = "{PSK}"' in with_psk and "\nsecrets {" in with_psk
    odd = 'a"b\\c#d-0123456789abcdef'
    for fmt in FORMATS:
        assert PSK not in render(tunnel(), fmt)
        shown = render(tunnel(psk=odd), fmt, include_psk=True)
        assert odd in shown if fmt == "text" else "0x" + odd.encode().hex() in shown


def test_explicit_proposals_are_kept_and_the_peer_starts_when_we_wait() -> None:
    text = render(tunnel(ike_proposals="aes256-sha256-modp2048", esp_proposals="aes256-sha256",
                         start_action="wait"), "swanctl")
    assert "proposals = aes256-sha256-modp2048\n" in text
    assert "esp_proposals = aes256-sha256\n" in text
    assert "start_action = start" in text


def test_strongswan_ipsec_conf() -> None:
    text = render(tunnel(start_action="wait"), "strongswan-ipsec", include_psk=True)
    conf = dict(re.findall(r"^    (\w+)=(.+)$", text, re.M))
    assert conf["left"] == conf["leftid"] == "198.51.100.7"
    assert conf["right"] == "203.0.113.10,203.0.113.11" and conf["rightid"] == "203.0.113.10"
    assert conf["leftsubnet"] == "10.99.0.0/16"
    assert conf["rightsubnet"] == "10.20.0.0/16,10.21.0.0/16"
    assert conf["ike"].endswith("modp2048!") and conf["esp"].endswith("!")  # strict
    assert (conf["ikelifetime"], conf["lifetime"], conf["margintime"], conf["rekeyfuzz"]) == (
        "4h", "1h", "5m", "50%")
    assert (conf["keyexchange"], conf["auto"], conf["dpdaction"]) == ("ikev2", "start",
                                                                      "restart")
    assert f'# 198.51.100.7 203.0.113.10 : PSK "{PSK}"' in text


def test_libreswan_conf_uses_its_own_algorithm_names() -> None:
    text = render(tunnel(), "libreswan")
    assert text.splitlines()[1] == "conn dc1-tun"
    conf = dict(re.findall(r"^    (\w+)=(.+)$", text, re.M))
    assert all(line.startswith(("#", "conn ", "    ")) or not line
               for line in text.splitlines())
    # accepted by Libreswan 4.10's algparse (see the module docstring)
    assert conf["ike"] == (
        "aes_gcm256+aes_gcm128-sha2_512+sha2_384+sha2_256-dh21+dh20+dh31+dh19+modp2048,"
        "aes256+aes128-sha2_512+sha2_384+sha2_256-dh21+dh20+dh31+dh19+modp2048")
    assert conf["esp"] == "aes_gcm256+aes_gcm128,aes256+aes128-sha2_512+sha2_384+sha2_256"
    assert conf["pfs"] == "no"  # one switch for all ESP proposals: ours without PFS
    assert conf["rightsubnets"] == "{10.20.0.0/16 10.21.0.0/16}"
    assert conf["leftsubnet"] == "10.99.0.0/16"
    assert (conf["ikev2"], conf["authby"], conf["salifetime"], conf["dpdtimeout"]) == (
        "insist", "secret", "1h", "30s")
    pfs_only = render(tunnel(esp_proposals="aes256-sha256-ecp256"), "libreswan")
    assert "    esp=aes256-sha2_256-dh19\n    pfs=yes\n" in pfs_only


def test_text_sheet_lists_every_parameter() -> None:
    text = render(tunnel(), "text")
    for expected in ("198.51.100.7", "203.0.113.10, 203.0.113.11", "IKEv2", "4h", "1h",
                     "5m plus up to 50%", "every 10s, timeout 30s, then restart",
                     "10.99.0.0/16", "10.20.0.0/16, 10.21.0.0/16", "ecp521",
                     "not shown: ask with --include-psk"):
        assert expected in text, expected
    assert PSK in render(tunnel(), "text", include_psk=True)


def test_a_tunnel_without_policies_still_renders() -> None:
    for fmt in FORMATS:
        text = render(tunnel(peer_networks=(), our_networks=()), fmt)
        assert "subnet" not in text and "_ts =" not in text


def test_file_names_and_unknown_formats() -> None:
    assert [file_name("t", f) for f in FORMATS] == [
        "t.swanctl.conf", "t.ipsec.conf", "t.libreswan.conf", "t.txt"]
    with pytest.raises(ValueError, match="format must be one of"):
        render(tunnel(), "cisco")


def test_the_fragment_size_is_named_where_the_peers_software_sets_one() -> None:
    """strongSwan sets its fragment size in strongswan.conf for all connections, so both
    strongSwan files name it in a comment; Libreswan has no such setting; every format turns
    fragmentation on."""
    small = tunnel(settings=TunnelSettings().changed(fragment_size="1400"))
    swanctl = render(small, "swanctl")
    assert "        fragmentation = yes\n" in swanctl
    assert "# strongSwan sets its own for all connections in strongswan.conf: charon { " \
           "fragment_size = 1400 }\n" in swanctl
    legacy = render(small, "strongswan-ipsec")
    assert "    fragmentation=yes\n" in legacy and "fragment_size = 1400 }" in legacy
    libreswan = render(small, "libreswan")
    assert "    fragmentation=yes\n" in libreswan and "fragment_size" not in libreswan
    assert "ours are datagrams of at most 1400 bytes;\n# Libreswan has no setting" in libreswan
    assert re.search(r"IKE fragmentation +RFC 7383; we send datagrams of at most 1400 bytes",
                     render(small, "text"))
