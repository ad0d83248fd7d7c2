"""sslvpn: an SSL VPN gateway speaking the OpenVPN 2.x protocol, with IPsec site-to-site."""

__version__ = "0.1.0"
