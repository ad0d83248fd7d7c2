"""ESP in tunnel mode (RFC 4303): packet protection per SA (`packet`) and the SA database (`sad`).

Sans-I/O like the rest of `sslvpn.ipsec`: bytes in, bytes out, randomness injected. The
runtime carries the results in UDP 4500 (RFC 3948) and feeds decrypted packets to a TUN.
"""
