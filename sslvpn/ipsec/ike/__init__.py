"""IKEv2 (RFC 7296) protocol core: codec, proposals, key derivation and the IKE SA machine.

Everything here is sans-I/O: time is an argument, randomness is injected, and bytes go in
and out through ``IkeSa.receive_datagram`` / ``IkeSa.datagrams_to_send`` (``sa.py``).

Modules, bottom up: ``constants`` (IANA numbers, tuning), ``traffic_selectors``,
``payloads`` + ``messages`` (wire codec), ``proposals`` (strongSwan notation, selection),
``crypto`` (DH 14/19/31, prf+, SK_*, SK payload, PSK AUTH, NAT-D), ``cookies``
(stateless COOKIE challenge), ``config`` (``IkeConfig``), ``events``, ``child`` (CHILD_SA
records), ``window`` (message IDs, retransmission), ``base`` / ``handshake`` /
``exchanges`` / ``sa`` (the state machine).
"""
