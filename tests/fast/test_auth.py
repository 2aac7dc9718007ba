"""Password hashing, token hashing and the failed-login slow-down."""

from __future__ import annotations

from cspd.auth import FailedLogins, hash_password, hash_token, verify_password


def test_password_round_trip() -> None:
    stored = hash_password("s3cret-pass")
    assert stored.startswith("scrypt$")
    assert verify_password("s3cret-pass", stored)
    assert not verify_password("other", stored)


def test_password_hash_is_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_malformed_hash_rejects() -> None:
    assert not verify_password("x", "plain")
    assert not verify_password("x", "md5$1$2$3$4$5")


def test_token_hash_is_not_token() -> None:
    assert hash_token("abc") != "abc"
    assert len(hash_token("abc")) == 64


def test_failed_logins_delay_grows_and_clears() -> None:
    failures = FailedLogins(step=1.0, max_delay=2.5)
    assert failures.delay_for("peer") == 0
    failures.record_failure("peer")
    assert failures.delay_for("peer") == 1.0
    for _ in range(5):
        failures.record_failure("peer")
    assert failures.delay_for("peer") == 2.5
    assert failures.delay_for("other") == 0
    failures.record_success("peer")
    assert failures.delay_for("peer") == 0
