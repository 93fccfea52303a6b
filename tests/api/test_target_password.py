"""GET /target and GET /password (COMPAT.md "/target, /password", seed 000)."""

import json
import time

import pytest
import requests

from otpdlib import HTTP_TIMEOUT, assert_error, assert_invalid, assert_json, pairs

CHANNELS = ["sms", "call", "email", "telegram"]


def target_of(o, channel, password):
    return o.get("/target", {"password": password, "channel": channel})


def assert_target(resp, target):
    assert_json(resp, 200)
    assert pairs(resp) == [("status", True), ("content", [("target", target)])], resp.text


def test_seed_target_request(otpd):
    otpd.send_ok("telegram", "1234567890", "1234567")
    r = requests.request("GET", otpd.url("/target"), timeout=HTTP_TIMEOUT,
                         data='{\n    "password": "1234567",\n    "channel": "telegram"\n}')
    assert_target(r, "1234567890")


@pytest.mark.parametrize("channel", CHANNELS)
def test_target_of_each_channel(shared_otpd, uniq, channel):
    target, code = uniq.target(channel), uniq.code(8)
    shared_otpd.send_ok(channel, target, code)
    assert_target(target_of(shared_otpd, channel, code), target)
    # query string works too
    r = shared_otpd.get("/target", params={"password": code, "channel": channel})
    assert_target(r, target)


def test_target_is_the_latest_live_one(shared_otpd, uniq):
    code = uniq.code(9)
    a, b = uniq.chat_id(), uniq.chat_id()
    shared_otpd.send_ok("telegram", a, code)
    shared_otpd.send_ok("telegram", b, code)
    assert_target(target_of(shared_otpd, "telegram", code), b)


def test_target_of_normalised_phone(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code(9)
    shared_otpd.send_ok("sms", "+" + phone, code)
    assert_target(target_of(shared_otpd, "sms", code), phone)


def test_target_is_per_channel(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code(9)
    shared_otpd.send_ok("sms", phone, code)
    for other in ("call", "email", "telegram"):
        r = target_of(shared_otpd, other, code)
        assert_error(r, 404, status_code="not_found")


def test_target_not_found_shape(shared_otpd, uniq):
    r = target_of(shared_otpd, "sms", uniq.code(10))
    assert_json(r, 404)
    got = pairs(r)
    assert [k for k, _ in got] == ["status", "status_code", "message"], r.text
    assert got[0] == ("status", False) and got[1] == ("status_code", "not_found"), r.text
    assert isinstance(got[2][1], str) and got[2][1], r.text


def test_target_of_expired_code_not_found(otpd_factory, uniq):
    o = otpd_factory()
    chat, code = uniq.chat_id(), uniq.code(9)
    o.send_ok("telegram", chat, code, lifetime=1)
    deadline = time.monotonic() + 5.0
    while target_of(o, "telegram", code).status_code == 200:
        assert time.monotonic() < deadline, "/target still found a lifetime=1 code after 5 s"
        time.sleep(0.1)
    assert_error(target_of(o, "telegram", code), 404, status_code="not_found")


@pytest.mark.parametrize("channel", ["whatever", "SMS ", "sms,email", "0", 1, ["sms"], True])
def test_target_invalid_channel(shared_otpd, channel):
    r = shared_otpd.get("/target", {"password": "12345", "channel": channel})
    assert_invalid(r, "channel")


def test_target_missing_fields(shared_otpd):
    r = shared_otpd.get("/target", {"channel": "sms"})
    assert_error(r, 400, field="password")
    r = shared_otpd.get("/target", {"password": "12345"})
    assert_error(r, 400, field="channel")


# ---- /password ------------------------------------------------------------------------

def test_password_disabled_by_default(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    shared_otpd.send_ok("sms", phone, code)
    r = shared_otpd.get("/password", {"target": phone})
    body = assert_error(r, 403, status_code="disabled")
    assert "OTPD_PASSWORD_READBACK" in body["message"], r.text
    assert code not in r.text


def test_password_readback(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_PASSWORD_READBACK": "true"})
    phone = uniq.phone()
    o.send_ok("sms", phone, "111111")
    o.send_ok("call", phone, "222222")
    r = o.get("/password", {"target": phone})
    assert_json(r, 200)
    # the latest live code sent to that target, any channel
    assert pairs(r) == [("status", True), ("content", [("password", "222222")])], r.text
    # the seed's request, verbatim shape
    r = requests.request("GET", o.url("/password"), timeout=HTTP_TIMEOUT,
                         data=json.dumps({"target": phone}, indent=4))
    assert r.json() == {"status": True, "content": {"password": "222222"}}
    for channel in ("email", "telegram"):
        target, code = uniq.target(channel), uniq.code(7)
        o.send_ok(channel, target, code)
        r = o.get("/password", params={"target": target})
        assert assert_json(r, 200) == {"status": True, "content": {"password": code}}, r.text
    # a number given as password reads back as its string
    phone2 = uniq.phone()
    r = o.post("/call", {"phone": phone2, "password": 4321, "lifetime": 300})
    assert r.status_code == 200, r.text
    assert o.get("/password", {"target": phone2}).json()["content"] == {"password": "4321"}


def test_password_readback_skips_expired_codes(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_PASSWORD_READBACK": "true"})
    phone = uniq.phone()
    o.send_ok("sms", phone, "333333", lifetime=300)
    o.send_ok("sms", phone, "444444", lifetime=1)
    deadline = time.monotonic() + 5.0
    while True:
        r = o.get("/password", {"target": phone})
        got = assert_json(r, 200)["content"]["password"]
        if got == "333333":
            break  # the later code expired: the latest unexpired one is the earlier
        assert got == "444444", r.text
        assert time.monotonic() < deadline, "a lifetime=1 code was still read back after 5 s"
        time.sleep(0.1)


def test_password_readback_nothing_found(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_PASSWORD_READBACK": "true"})
    r = o.get("/password", {"target": uniq.phone()})
    assert_error(r, 404)
    r = o.get("/password", {})
    assert_error(r, 400, field="target")
