from hypothesis import given
from hypothesis import strategies as st

from sslvpn.net.replay import ReplayVerdict, ReplayWindow


def test_zero_is_always_a_replay() -> None:
    assert ReplayWindow().check(0) is ReplayVerdict.REPLAYED


def test_in_order_then_duplicate() -> None:
    window = ReplayWindow(64)
    for seq in range(1, 100):
        assert window.accept(seq)
    assert window.check(99) is ReplayVerdict.REPLAYED
    assert window.check(50) is ReplayVerdict.REPLAYED


def test_out_of_order_inside_window_is_accepted_once() -> None:
    window = ReplayWindow(64)
    assert window.accept(10)
    assert window.accept(5)
    assert not window.accept(5)
    assert window.accept(7)


def test_too_old_after_a_jump() -> None:
    window = ReplayWindow(64)
    assert window.accept(1)
    assert window.accept(200)
    assert window.check(136) is ReplayVerdict.TOO_OLD
    assert window.check(137) is ReplayVerdict.FRESH
    assert window.check(1) is ReplayVerdict.TOO_OLD


def test_check_does_not_mutate() -> None:
    window = ReplayWindow(8)
    window.check(5)
    assert window.top == 0


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200))
def test_matches_a_reference_model(seqs: list[int]) -> None:
    window = ReplayWindow(32)
    seen: set[int] = set()
    top = 0
    for seq in seqs:
        expected = seq not in seen and seq > top - 32
        assert window.accept(seq) is expected
        if expected:
            seen.add(seq)
            top = max(top, seq)
