"""A stand-in PKI and profile for the OpenVPN baseline when `sslvpn init` cannot run.

The bench prefers the data folder made by the real CLI (then both servers share it). When the
CLI is broken in the tree being measured, the baseline must still run: this module makes the
same layout (``pki/ca.crt``, ``server.crt``, ``server.key``, ``tls-crypt.key``) with openssl
(ECDSA P-256, like ``sslvpn init``'s default) and writes profiles with the directives that
``client_profiles.ovpn`` renders, so the OpenVPN column measures the same client settings.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SERVER_CN = "sslvpn-bench-server"
_EXT = {
    "server": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
              "extendedKeyUsage=serverAuth\n",
    "client": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
              "extendedKeyUsage=clientAuth\n",
}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    os.chmod(path, 0o600)


def _issue(pki: Path, name: str, cn: str, kind: str) -> None:
    _key(pki / f"{name}.key")
    csr, ext = pki / f"{name}.csr", pki / f"{name}.ext"
    ext.write_text(_EXT[kind])
    _openssl("req", "-new", "-key", str(pki / f"{name}.key"), "-subj", f"/CN={cn}",
             "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
             "-extfile", str(ext), "-out", str(pki / f"{name}.crt"))
    csr.unlink()
    ext.unlink()


def make_pki(data_dir: Path) -> Path:
    """CA, server and client certificates and a tls-crypt key under ``data_dir/pki``."""
    pki = data_dir / "pki"
    pki.mkdir(parents=True, mode=0o700)
    _key(pki / "ca.key")
    _openssl("req", "-x509", "-new", "-key", str(pki / "ca.key"), "-sha256", "-days", "30",
             "-subj", "/CN=sslvpn bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(pki / "ca.crt"))
    _issue(pki, "server", SERVER_CN, "server")
    _issue(pki, "client", "bench.d0", "client")
    subprocess.run(["openvpn", "--genkey", "tls-crypt", str(pki / "tls-crypt.key")],
                   check=True, capture_output=True, timeout=30)
    os.chmod(pki / "tls-crypt.key", 0o600)
    return pki


def write_profile(pki: Path, path: Path, *, remote: str, port: int, proto: str) -> None:
    """An inline profile with the directives of ``client_profiles.ovpn.render_ovpn``."""
    def block(tag: str, name: str) -> list[str]:
        return [f"<{tag}>", (pki / name).read_text().strip("\n"), f"</{tag}>"]

    transport = "tcp-client" if proto == "tcp" else "udp"
    lines = [
        "client", "dev tun", f"proto {transport}", f"remote {remote} {port} {transport}",
        "resolv-retry infinite", "nobind", "persist-key", "persist-tun",
        "remote-cert-tls server", f"verify-x509-name {SERVER_CN} name",
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305", "verb 3",
        *(["explicit-exit-notify 1"] if proto == "udp" else []),
        *block("ca", "ca.crt"), *block("cert", "client.crt"), *block("key", "client.key"),
        *block("tls-crypt", "tls-crypt.key"),
    ]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
