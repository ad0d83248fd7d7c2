"""The shared argon2 password helpers."""

from __future__ import annotations

from client_profiles.passwords import generate_password, hash_password, verify_password


def test_hash_verifies_only_the_right_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "wrong horse")


def test_missing_or_garbage_hash_never_verifies() -> None:
    assert not verify_password(None, "anything")
    assert not verify_password("not-a-hash", "anything")


def test_generated_passwords_are_long_and_distinct() -> None:
    first, second = generate_password(), generate_password()
    assert first != second and len(first) >= 20
