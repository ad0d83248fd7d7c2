"""IKEv2 (RFC 7296) protocol core: codec, proposals, key derivation and the IKE SA machine.

Everything here is sans-I/O: time is an argument, randomness is injected, and bytes go in
and out through ``IkeSa.receive_datagram`` / ``IkeSa.datagrams_to_send``.
"""
