"""Sans-I/O IKEv2 and ESP-in-UDP core for site-to-site tunnels."""
