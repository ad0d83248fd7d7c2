"""PKI, certificate lifecycle, .ovpn profile rendering and QR codes."""
