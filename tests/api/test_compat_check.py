"""Checks: the attempt limit (OTPD_MAX_CHECK_ATTEMPTS), consumption (OTPD_CHECK_CONSUMES),
expiry (lifetime). COMPAT.md "Sending and checking"."""

import threading
import time

import pytest

from otpdlib import assert_ok


def test_attempt_limit_voids_live_codes(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "3"})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    for _ in range(3):
        assert o.check("sms", phone, uniq.code()) is False
    # after 3 wrong checks even the right code answers false
    assert o.check("sms", phone, code) is False
    assert o.check("sms", phone, code) is False
    # a new send makes its new code checkable (the voided old one stays void)
    new = uniq.code()
    o.send_ok("sms", phone, new)
    assert o.check("sms", phone, new) is True
    assert o.check("sms", phone, code) is False


def test_attempt_limit_voids_every_live_code_of_the_target(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "3"})
    chat = uniq.chat_id()
    codes = [uniq.code() for _ in range(3)]
    for c in codes:
        o.send_ok("telegram", chat, c)
    for _ in range(3):
        assert o.check("telegram", chat, uniq.code()) is False
    for c in codes:
        assert o.check("telegram", chat, c) is False


def test_concurrent_wrong_checks_cannot_exceed_the_limit(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "3"})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    wrong = [uniq.code() for _ in range(16)]
    results = [None] * len(wrong)

    def worker(i):
        results[i] = o.check("sms", phone, wrong[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(wrong))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [False] * len(wrong)
    assert o.check("sms", phone, code) is False


def test_attempt_limit_is_per_channel_and_target(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "3"})
    a, b, code_a, code_b = uniq.phone(), uniq.phone(), uniq.code(), uniq.code()
    o.send_ok("sms", a, code_a)
    o.send_ok("sms", b, code_b)
    email, code_e = uniq.email(), uniq.code()
    o.send_ok("email", email, code_e)
    for _ in range(3):
        assert o.check("sms", a, uniq.code()) is False
    assert o.check("sms", a, code_a) is False
    # another target and another channel keep their codes
    assert o.check("sms", b, code_b) is True
    assert o.check("email", email, code_e) is True


def test_default_attempt_limit_is_5(otpd_factory, uniq):
    o = otpd_factory()
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("call", phone, code)
    for _ in range(4):
        assert o.check("call", phone, uniq.code()) is False
    assert o.check("call", phone, code) is True  # 4 wrong checks: still valid
    other, code2 = uniq.phone(), uniq.code()
    o.send_ok("call", other, code2)
    for _ in range(5):
        assert o.check("call", other, uniq.code()) is False
    assert o.check("call", other, code2) is False  # 5 wrong checks: void


def test_attempt_limit_zero_is_unlimited(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "0"})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    for _ in range(12):
        assert o.check("sms", phone, uniq.code()) is False
    assert o.check("sms", phone, code) is True


def test_check_does_not_consume_by_default(shared_otpd, uniq):
    chat, code = uniq.chat_id(), uniq.code()
    shared_otpd.send_ok("telegram", chat, code)
    for _ in range(4):
        assert shared_otpd.check("telegram", chat, code) is True


def test_check_consumes_when_configured(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_CHECK_CONSUMES": "true"})
    phone, code, other = uniq.phone(), uniq.code(), uniq.code()
    o.send_ok("sms", phone, code)
    o.send_ok("sms", phone, other)
    assert o.check("sms", phone, code) is True
    assert o.check("sms", phone, code) is False
    # consuming one code leaves the target's other live codes alone
    assert o.check("sms", phone, other) is True
    assert o.check("sms", phone, other) is False


def _send_and_check_within_a_second(o, channel, target, code):
    """Send with lifetime=1 at the start of a wall-clock second and check at once.
    Returns the check's answer, or None when the machine was too slow to tell (more than
    0.8 s between the send and the check's answer)."""
    # Time is the subject here: otpd's clock has whole seconds, so a 1-second code sent
    # late in a second may already be expired at the next. Start early in a second.
    frac = time.time() % 1.0
    if frac > 0.1:
        time.sleep(1.0 - frac + 0.01)
    t0 = time.monotonic()
    o.send_ok(channel, target, code, lifetime=1)
    ok = o.check(channel, target, code)
    if time.monotonic() - t0 > 0.8:
        return None
    return ok


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_code_expires_after_its_lifetime(otpd_factory, uniq, channel):
    o = otpd_factory()
    for _ in range(5):
        target, code = uniq.target(channel), uniq.code()
        first = _send_and_check_within_a_second(o, channel, target, code)
        if first is not None:
            break
    else:
        pytest.fail("the machine never answered a send and a check within 0.8 s")
    assert first is True
    deadline = time.monotonic() + 5.0
    while o.check(channel, target, code):
        assert time.monotonic() < deadline, "a lifetime=1 code was still valid after 5 s"
        time.sleep(0.1)
    # expired stays expired
    assert o.check(channel, target, code) is False
    # and an expired code does not stop a new one
    new = uniq.code()
    o.send_ok(channel, target, new)
    assert o.check(channel, target, new) is True


def test_code_lives_for_its_lifetime(otpd_factory, uniq):
    # expire_at = now + lifetime: a 3-second code sent early in a second is still valid
    # 1.2 s later (whole-second clocks cost it at most one second)
    o = otpd_factory()
    frac = time.time() % 1.0
    if frac > 0.1:
        time.sleep(1.0 - frac + 0.01)
    t0 = time.monotonic()
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code, lifetime=3)
    time.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))
    ok = o.check("sms", phone, code)
    if time.monotonic() - t0 < 1.9:
        assert ok is True
    else:
        pytest.skip("the machine took too long to tell")


def test_attempt_limit_counts_across_query_and_body_checks(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "2"})
    email, code = uniq.email(), uniq.code()
    o.send_ok("email", email, code)
    assert o.check("email", email, uniq.code()) is False
    r = o.get("/email/check", params={"email": email, "password": uniq.code()})
    assert r.json() == {"status": False}
    r = o.get("/email/check", params={"email": email, "password": code})
    assert r.json() == {"status": False}
    new = uniq.code()
    o.send_ok("email", email, new)
    assert_ok(o.get("/email/check", params={"email": email, "password": new}))
