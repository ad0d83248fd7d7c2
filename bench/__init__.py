"""Benchmark suite: sslvpn against OpenVPN 2.6 and strongSwan, run by ``make bench``.

Not part of the test suite. ``python -m bench`` builds network namespaces (prefix ``sb``),
measures both servers with the same real clients, and writes a table, JSON and a PNG chart.
"""
