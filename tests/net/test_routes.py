from sslvpn.net.ippacket import pack_address
from sslvpn.net.routes import RouteTable


def test_longest_prefix_wins() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("10.0.0.0/8", "wide")
    table.add("10.10.0.0/24", "vpc")
    table.add("10.10.0.10/32", "host")
    assert table.lookup(pack_address("10.10.0.10")) == "host"
    assert table.lookup(pack_address("10.10.0.11")) == "vpc"
    assert table.lookup(pack_address("10.99.0.1")) == "wide"
    assert table.lookup(pack_address("192.168.0.1")) is None
    assert pack_address("10.10.0.11") in table


def test_remove_and_replace() -> None:
    table: RouteTable[int] = RouteTable()
    table.add("10.10.0.0/24", 1)
    table.add("10.10.0.0/24", 2)
    assert table.lookup(pack_address("10.10.0.5")) == 2
    assert table.remove("10.10.0.0/24") == 2
    assert table.remove("10.10.0.0/24") is None
    assert table.remove("10.20.0.0/16") is None
    assert table.lookup(pack_address("10.10.0.5")) is None


def test_ipv6_and_default_route() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("fd10::/64", "vpc6")
    table.add("0.0.0.0/0", "any4")
    assert table.lookup(pack_address("fd10::a")) == "vpc6"
    assert table.lookup(pack_address("fd11::a")) is None
    assert table.lookup(pack_address("8.8.8.8")) == "any4"
    assert table.lookup(b"abc") is None
    assert sorted(str(net) for net, _ in table.networks()) == ["0.0.0.0/0", "fd10::/64"]
