"""Profile text rendering and QR images (decoded back with the real `zbarimg`)."""

from __future__ import annotations

import io
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from client_profiles.ovpn import (
    ClientRequirement,
    ProfileMaterial,
    Remote,
    client_requirement,
    remotes_for,
    render_ovpn,
)
from client_profiles.qr import qr_png, qr_svg

PEM = "-----BEGIN X-----\nAAAA\n-----END X-----\n"
MATERIAL = ProfileMaterial(
    friendly_name="alice.laptop @ vpn.example.test",
    server_name="vpn.example.test",
    remotes=(Remote("vpn.example.test", 1194, "udp"),),
    ca_pem=PEM,
    cert_pem=PEM,
    key_pem="-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
    tls_crypt_key="-----BEGIN OpenVPN Static key V1-----\n00\n-----END OpenVPN Static key V1-----",
)


def test_udp_profile_has_every_required_directive() -> None:
    text = render_ovpn(MATERIAL)
    lines = text.splitlines()
    for directive in (
        'setenv FRIENDLY_NAME "alice.laptop @ vpn.example.test"',
        "client",
        "dev tun",
        "proto udp",
        "remote vpn.example.test 1194 udp",
        "nobind",
        "persist-key",
        "persist-tun",
        "remote-cert-tls server",
        "verify-x509-name vpn.example.test name",
        "ignore-unknown-option data-ciphers",
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        "explicit-exit-notify 1",
        "<ca>",
        "</ca>",
        "<cert>",
        "<key>",
        "</key>",
        "<tls-crypt>",
        "</tls-crypt>",
    ):
        assert directive in lines, directive
    assert "<tls-crypt-v2>" not in text
    assert "server-poll-timeout" not in text  # one remote: nothing to fail over to
    assert "secret" in text and "secret" not in repr(MATERIAL)


def test_both_protocols_list_udp_first_and_skip_exit_notify() -> None:
    remotes = remotes_for(["a.example", "198.18.0.1"], port=443, protocols="both")
    text = render_ovpn(replace(MATERIAL, remotes=remotes))
    assert re.findall(r"^remote .*$", text, re.M) == [
        "remote a.example 443 udp",
        "remote 198.18.0.1 443 udp",
        "remote a.example 443 tcp-client",
        "remote 198.18.0.1 443 tcp-client",
    ]
    assert "proto udp" in text.splitlines()
    assert "server-poll-timeout 5" in text.splitlines()
    assert "explicit-exit-notify" not in text


def test_profile_fits_openvpn_connect_limits() -> None:
    """ovpn3 (Connect) limits: needs `client`, lines <= 512 chars, profile <= 256 KiB,
    and refuses static-key mode, `fragment`, TAP and server-locked profiles."""
    remotes = remotes_for(["a.example", "198.18.0.1"], port=1194, protocols="both")
    text = render_ovpn(replace(MATERIAL, remotes=remotes))
    lines = text.splitlines()
    assert "client" in lines
    assert max(len(line) for line in lines) <= 512
    assert len(text.encode()) <= 262144
    for refused in ("secret ", "fragment", "dev tap", "GENERIC_CONFIG", "keepalive"):
        assert not any(line.startswith(refused) for line in lines), refused
    assert "GENERIC_CONFIG" not in text


def test_tcp_only_and_tls_crypt_v2() -> None:
    remotes = remotes_for(["a.example"], port=1194, protocols="both", only="tcp")
    material = replace(MATERIAL, remotes=remotes, tls_crypt_key=None, tls_crypt_v2_key=PEM)
    text = render_ovpn(material)
    assert "proto tcp-client" in text.splitlines()
    assert "<tls-crypt-v2>" in text and "<tls-crypt>" not in text
    assert "explicit-exit-notify" not in text


# Every directive and inline block a profile may use that OpenVPN 2.4.12 knows (options.c
# add_option); `data-ciphers` (2.5) and `tls-crypt-v2` (2.5) are not among them.
KNOWN_TO_2_4 = {
    "setenv", "client", "dev", "proto", "remote", "resolv-retry", "nobind", "persist-key",
    "persist-tun", "remote-cert-tls", "verify-x509-name", "ignore-unknown-option", "verb",
    "remote-random", "server-poll-timeout", "explicit-exit-notify", "<ca>", "<cert>", "<key>",
    "<tls-crypt>",
}


def _variants() -> list[tuple[str, str]]:
    both = remotes_for(["a.example", "198.18.0.1"], port=1194, protocols="both")
    v2 = replace(MATERIAL, tls_crypt_key=None, tls_crypt_v2_key=PEM)
    return [
        ("tls-crypt", render_ovpn(MATERIAL)),
        ("tls-crypt", render_ovpn(replace(MATERIAL, remotes=both, spread=True))),
        ("tls-crypt-v2", render_ovpn(v2)),
        ("tls-crypt-v2", render_ovpn(replace(v2, remotes=both))),
    ]


@pytest.mark.parametrize(("control_channel", "text"), _variants())
def test_openvpn_2_4_takes_every_line_of_a_tls_crypt_profile(
    control_channel: str, text: str
) -> None:
    """The compatibility lines, pinned: 2.4 refuses any unknown directive unless an
    earlier `ignore-unknown-option` names it; only tls-crypt-v2 itself needs 2.5."""
    lines = text.splitlines()
    assert lines.index("ignore-unknown-option data-ciphers") + 1 == lines.index(
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305")
    ignored: set[str] = set()
    unknown = []
    inside = False
    for line in lines:
        if inside or not line or line.startswith("#"):
            inside = inside and not line.startswith("</")
            continue
        name = line.split()[0]
        if name.startswith("<"):
            inside = True
        if name == "ignore-unknown-option":
            ignored.update(line.split()[1:])
        if name not in KNOWN_TO_2_4 and name not in ignored:
            unknown.append(name)
    if control_channel == "tls-crypt":
        assert unknown == []
        assert "# Needs" not in text
    else:
        assert unknown == ["<tls-crypt-v2>"]
        note = lines[lines.index("<tls-crypt-v2>") - 1]
        assert note == "# Needs OpenVPN 2.5 or later, or OpenVPN 3 (Connect); " \
            "tls-crypt-v2 is unknown to OpenVPN 2.4."


def test_client_requirement_per_control_channel() -> None:
    assert client_requirement("tls-crypt", force_cookie=True) == ClientRequirement(
        "2.4", "Needs OpenVPN 2.4 or later, or OpenVPN 3 (Connect).")
    assert client_requirement("tls-crypt-v2").oldest == "2.5"
    assert client_requirement("tls-crypt-v2", udp=False, force_cookie=True).oldest == "2.5"
    cookie = client_requirement("tls-crypt-v2", force_cookie=True)
    assert cookie.oldest == "2.6" and "OpenVPN 2.5 connects over TCP only" in cookie.text
    forced = render_ovpn(replace(MATERIAL, tls_crypt_key=None, tls_crypt_v2_key=PEM,
                                 force_cookie=True))
    assert f"# {cookie.text}" in forced.splitlines()


def test_remotes_refuse_a_protocol_the_gateway_does_not_offer() -> None:
    with pytest.raises(ValueError):
        remotes_for(["a.example"], port=1194, protocols="udp", only="tcp")
    with pytest.raises(ValueError):
        remotes_for([], port=1194, protocols="udp")


@pytest.mark.parametrize(
    "change",
    [
        {"friendly_name": 'x"\nscript-security 2'},
        {"friendly_name": ""},
        {"server_name": "vpn name"},
        {"remotes": (Remote("evil\nup /bin/sh", 1194, "udp"),)},
        {"remotes": (Remote("a.example", 0, "udp"),)},
        {"remotes": ()},
        {"cert_pem": PEM + "</cert>\nup /bin/sh\n<cert>"},
        {"tls_crypt_v2_key": PEM},
        {"tls_crypt_key": None},
    ],
)
def test_no_input_can_smuggle_a_directive(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_ovpn(replace(MATERIAL, **change))  # type: ignore[arg-type]


def _zbar(path: Path) -> str:
    result = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_png_decodes_back_to_the_text(tmp_path: Path) -> None:
    link = "https://vpn.example.test/import/6f1c0a3e9b7d4f21a8c5e0b3d9f7a6c4"
    png = qr_png(link)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "qr.png").write_bytes(png)
    assert _zbar(tmp_path / "qr.png") == link


def test_svg_is_valid_and_decodes_back_to_the_text(tmp_path: Path) -> None:
    link = "https://vpn.example.test/import/abc123"
    svg = qr_svg(link)
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    assert root.tag.endswith("svg")
    (tmp_path / "qr.png").write_bytes(_rasterise(svg))
    assert _zbar(tmp_path / "qr.png") == link


def _rasterise(svg: str, scale: int = 10) -> bytes:
    """Draw the SVG's module rectangles (its background is white) into a PNG."""
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    width = float(root.attrib["viewBox"].split()[2])
    size = int(width * scale)
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    modules = [p for p in root.iter() if p.tag.endswith("path")]
    assert len(modules) == 1, "expected one QR path in the SVG"
    pattern = r"M([\d.]+),([\d.]+)H([\d.]+)V([\d.]+)H[\d.]+z"
    for x0, y0, x1, y1 in re.findall(pattern, modules[0].attrib["d"]):
        box = [float(x0) * scale, float(y0) * scale, float(x1) * scale - 1, float(y1) * scale - 1]
        draw.rectangle(box, fill=0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_qr_refuses_empty_text() -> None:
    with pytest.raises(ValueError):
        qr_png("")
