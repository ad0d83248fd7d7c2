"""Bench burst clients get one profile each, with only their certificate and key swapped in."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.credentials import profiles_for

BASE = ("client\nremote 198.18.0.1 1194\n<ca>\nCA\n</ca>\n"
        "<cert>\nOLD\n</cert>\n<key>\nOLDKEY\n</key>\n")


def test_each_profile_carries_its_own_certificate_and_key(tmp_path: Path) -> None:
    base = tmp_path / "bench-udp.ovpn"
    base.write_text(BASE)
    paths = profiles_for(base, [("CERT0\n", "KEY0"), ("CERT1", "KEY1\n")], tmp_path / "out")
    texts = [p.read_text() for p in paths]
    assert texts[0] == BASE.replace("OLD\n", "CERT0\n").replace("OLDKEY", "KEY0")
    assert "<cert>\nCERT1\n</cert>\n<key>\nKEY1\n</key>" in texts[1]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)


def test_a_profile_without_an_inline_key_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "odd.ovpn"
    base.write_text(BASE.replace("<key>\nOLDKEY\n</key>\n", ""))
    with pytest.raises(ValueError, match="<key>"):
        profiles_for(base, [("C", "K")], tmp_path / "out")
