"""Sending and checking with the seed docs' exact requests (seed 000) and the rules of
COMPAT.md "Requests" and "Sending and checking": where parameters come from, casts,
normalisation, which check accepts which channel's codes."""

import json

import pytest
import requests

from otpdlib import (HTTP_TIMEOUT, TARGET_FIELD, assert_json, assert_ok, pairs,
                     send_body)

# The request examples of seed 000, verbatim.
SEED_SEND = {
    "sms": """{
    "ip": "123.123.123.123",
    "phone": "77011234567",
    "password": "12345",
    "lifetime": 300,
    "message": "Your OTP is 12345"
}""",
    "call": """{
    "ip": "123.123.123.123",
    "phone": "77011234567",
    "password": "12345",
    "lifetime": 300
}""",
    "email": """{
    "ip": "123.123.123.123",
    "email": "foobar@example.com",
    "password": "12345",
    "lifetime": 300,
    "subject": "Hello",
    "text": "Your OTP is 12345"
}""",
    "telegram": """{
    "ip": "123.123.123.123",
    "chat_id": "1234567890",
    "password": "12345",
    "lifetime": 300,
    "message": "Your OTP is 12345"
}""",
}

SEED_CHECK = {
    "sms": """{
    "phone": "77011234567",
    "password": "12345"
}""",
    "call": """{
    "phone": "77011234567",
    "password": "12345"
}""",
    "email": """{
    "email": "foobar@example.com",
    "password": "12345"
}""",
    "telegram": """{
    "chat_id": "1234567890",
    "password": "12345"
}""",
}

SEED_TARGET = {"sms": "77011234567", "call": "77011234567", "email": "foobar@example.com",
               "telegram": "1234567890"}

CHANNELS = ["sms", "call", "email", "telegram"]


def raw(otpd, method, path, data, **kw):
    kw.setdefault("timeout", HTTP_TIMEOUT)
    return requests.request(method, otpd.url(path), data=data, **kw)


@pytest.mark.parametrize("channel", CHANNELS)
def test_seed_send_then_check(otpd, channel):
    r = raw(otpd, "POST", "/" + channel, SEED_SEND[channel],
            headers={"Content-Type": "application/json"})
    assert_ok(r)
    assert r.headers["Content-Type"].startswith("application/json")
    assert pairs(r) == [("status", True)]

    # the seed's check request: GET with a JSON body
    r = raw(otpd, "GET", f"/{channel}/check", SEED_CHECK[channel],
            headers={"Content-Type": "application/json"})
    assert_ok(r)
    # checking twice keeps working (a successful check does not use the code up)
    r = raw(otpd, "GET", f"/{channel}/check", SEED_CHECK[channel])
    assert_ok(r)
    # a wrong code is not an error: HTTP 200 {"status":false}
    wrong = SEED_CHECK[channel].replace('"12345"', '"54321"')
    r = raw(otpd, "GET", f"/{channel}/check", wrong)
    body = assert_json(r, 200)
    assert body == {"status": False}
    assert pairs(r) == [("status", False)]
    # the right code still works after one wrong check
    assert otpd.check(channel, SEED_TARGET[channel], "12345") is True


@pytest.mark.parametrize("channel", CHANNELS)
def test_check_with_query_string(shared_otpd, uniq, channel):
    target, code = uniq.target(channel), uniq.code()
    shared_otpd.send_ok(channel, target, code)
    field = TARGET_FIELD[channel]
    r = shared_otpd.get(f"/{channel}/check", params={field: target, "password": code})
    assert_ok(r)
    r = shared_otpd.get(f"/{channel}/check", params={field: target, "password": uniq.code()})
    assert assert_json(r, 200) == {"status": False}


def test_check_of_unknown_target_is_false(shared_otpd, uniq):
    for channel in CHANNELS:
        assert shared_otpd.check(channel, uniq.target(channel), uniq.code()) is False


def test_send_via_query_string_only(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    r = shared_otpd.post("/sms", params={"phone": phone, "password": code, "lifetime": "300",
                                         "message": "Your code is " + code})
    assert_ok(r)
    assert shared_otpd.check("sms", phone, code)


def test_send_via_json_body_only(shared_otpd, uniq):
    email, code = uniq.email(), uniq.code()
    assert_ok(shared_otpd.post("/email", send_body("email", email, code)))
    assert shared_otpd.check("email", email, code)


def test_query_and_body_are_merged_body_overrides(shared_otpd, uniq):
    q_phone, b_phone, code = uniq.phone(), uniq.phone(), uniq.code()
    # phone in both (the body's wins), password and lifetime only in the query,
    # message only in the body
    r = shared_otpd.post("/sms", {"phone": b_phone, "message": "code " + code},
                         params={"phone": q_phone, "password": code, "lifetime": "300"})
    assert_ok(r)
    assert shared_otpd.check("sms", b_phone, code) is True
    assert shared_otpd.check("sms", q_phone, code) is False


def test_body_overrides_query_on_check(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    shared_otpd.send_ok("sms", phone, code)
    r = shared_otpd.get("/sms/check", {"password": code},
                        params={"phone": phone, "password": uniq.code()})
    assert_ok(r)
    r = shared_otpd.get("/sms/check", {"password": uniq.code()},
                        params={"phone": phone, "password": code})
    assert assert_json(r, 200) == {"status": False}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=utf-8"])
def test_body_is_json_whatever_the_content_type(shared_otpd, uniq, content_type):
    phone, code = uniq.phone(), uniq.code()
    headers = {"Content-Type": content_type} if content_type else {}
    r = raw(shared_otpd, "POST", "/sms", json.dumps(send_body("sms", phone, code)),
            headers=headers)
    assert_ok(r)
    r = raw(shared_otpd, "GET", "/sms/check", json.dumps({"phone": phone, "password": code}),
            headers=headers)
    assert_ok(r)


def test_sms_check_accepts_call_codes(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    shared_otpd.send_ok("call", phone, code)
    assert shared_otpd.check("sms", phone, code) is True
    assert shared_otpd.check("call", phone, code) is True


def test_call_check_does_not_accept_sms_codes(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    shared_otpd.send_ok("sms", phone, code)
    assert shared_otpd.check("call", phone, code) is False
    assert shared_otpd.check("sms", phone, code) is True


def test_telegram_and_phone_channels_are_separate(shared_otpd, uniq):
    # a chat id made only of digits is also a valid phone: the channels must not mix
    target, tg_code, sms_code = uniq.chat_id(), uniq.code(), uniq.code()
    shared_otpd.send_ok("telegram", target, tg_code)
    shared_otpd.send_ok("sms", target, sms_code)
    assert shared_otpd.check("telegram", target, tg_code) is True
    assert shared_otpd.check("telegram", target, sms_code) is False
    assert shared_otpd.check("sms", target, sms_code) is True
    assert shared_otpd.check("sms", target, tg_code) is False
    assert shared_otpd.check("call", target, tg_code) is False


def test_email_codes_only_check_on_email(shared_otpd, uniq):
    email, code = uniq.email(), uniq.code()
    shared_otpd.send_ok("email", email, code)
    assert shared_otpd.check("email", email, code) is True
    # an email address cannot be a phone or chat id: the other checks refuse it as input
    for channel in ("sms", "call", "telegram"):
        r = shared_otpd.get(f"/{channel}/check", {TARGET_FIELD[channel]: email,
                                                   "password": code})
        assert r.status_code == 400, r.text


def test_every_live_code_of_a_target_is_valid(shared_otpd, uniq):
    phone = uniq.phone()
    codes = [uniq.code() for _ in range(3)]
    for c in codes:
        shared_otpd.send_ok("sms", phone, c)
    for c in codes:
        assert shared_otpd.check("sms", phone, c) is True


def test_codes_are_per_target(shared_otpd, uniq):
    a, b, code = uniq.phone(), uniq.phone(), uniq.code()
    shared_otpd.send_ok("sms", a, code)
    assert shared_otpd.check("sms", b, code) is False
    assert shared_otpd.check("sms", a, code) is True


# ---- casts and normalisation ------------------------------------------------------------

def test_password_as_number_checks_as_string(shared_otpd, uniq):
    phone = uniq.phone()
    assert_ok(shared_otpd.post("/sms", {"phone": phone, "password": 12345, "lifetime": 300,
                                        "message": "Your OTP is 12345"}))
    assert shared_otpd.check("sms", phone, "12345") is True
    # and a check may give it as a number too
    r = shared_otpd.get("/sms/check", {"phone": phone, "password": 12345})
    assert_ok(r)


def test_password_as_float_is_cast_like_php(shared_otpd, uniq):
    # PHP's (string) of a float: 1.5 -> "1.5", 12345.0 -> "12345"
    phone = uniq.phone()
    assert_ok(shared_otpd.post("/sms", {"phone": phone, "password": 1.5, "lifetime": 300,
                                        "message": "m"}))
    assert shared_otpd.check("sms", phone, "1.5") is True
    phone = uniq.phone()
    assert_ok(shared_otpd.post("/call", {"phone": phone, "password": 12345.0, "lifetime": 300}))
    assert shared_otpd.check("call", phone, "12345") is True


@pytest.mark.parametrize("lifetime", ["300", 300.9, " 300 ", 86400, "86400", 1])
def test_lifetime_casts_accepted(shared_otpd, uniq, lifetime):
    phone, code = uniq.phone(), uniq.code()
    assert_ok(shared_otpd.post("/sms", {"phone": phone, "password": code, "lifetime": lifetime,
                                        "message": "m"}))


def test_message_and_subject_as_numbers_accepted(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    assert_ok(shared_otpd.post("/sms", {"phone": phone, "password": code, "lifetime": 300,
                                        "message": 12345}))
    assert shared_otpd.check("sms", phone, code)
    chat, code = uniq.chat_id(), uniq.code()
    assert_ok(shared_otpd.post("/telegram", {"chat_id": chat, "password": code, "lifetime": 300,
                                             "message": 4.5}))
    email, code = uniq.email(), uniq.code()
    assert_ok(shared_otpd.post("/email", {"email": email, "password": code, "lifetime": 300,
                                          "subject": 42}))
    assert shared_otpd.check("email", email, code)


def test_phone_with_plus_is_normalised(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    assert_ok(shared_otpd.post("/sms", send_body("sms", "+" + phone, code)))
    assert shared_otpd.check("sms", phone, code) is True
    assert shared_otpd.check("sms", "+" + phone, code) is True
    # and the other way round
    phone, code = uniq.phone(), uniq.code()
    shared_otpd.send_ok("call", phone, code)
    assert shared_otpd.check("call", "+" + phone, code) is True


def test_strings_are_trimmed(shared_otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    assert_ok(shared_otpd.post("/sms", {"phone": f"  {phone}\t", "password": f" {code} ",
                                        "lifetime": 300, "message": " hello "}))
    assert shared_otpd.check("sms", phone, code) is True
    r = shared_otpd.get("/sms/check", {"phone": f" {phone} ", "password": f"\n{code}  "})
    assert_ok(r)
    email, code = uniq.email(), uniq.code()
    assert_ok(shared_otpd.post("/email", {"email": f" {email} ", "password": code,
                                          "lifetime": 300, "subject": " s "}))
    assert shared_otpd.check("email", email, code) is True


@pytest.mark.parametrize("chat_id", ["1234567890", 1234567890, "-1001234567890", -1001234567890,
                                     " 42 "])
def test_chat_id_string_or_number_negative_for_groups(shared_otpd, uniq, chat_id):
    code = uniq.code()
    assert_ok(shared_otpd.post("/telegram", {"chat_id": chat_id, "password": code,
                                             "lifetime": 300, "message": "m " + code}))
    canonical = str(chat_id).strip()
    assert shared_otpd.check("telegram", canonical, code) is True
    # a number and a string name the same chat
    r = shared_otpd.get("/telegram/check", {"chat_id": int(canonical), "password": code})
    assert_ok(r)


@pytest.mark.parametrize("digits", [5, 20])
def test_phone_length_bounds_accepted(shared_otpd, uniq, digits):
    phone = (uniq.phone() * 2)[:digits]
    code = uniq.code()
    shared_otpd.send_ok("sms", phone, code)
    assert shared_otpd.check("sms", phone, code)


def test_ipv6_ip_accepted(shared_otpd, uniq):
    shared_otpd.send_ok("sms", uniq.phone(), uniq.code(), ip="2001:db8::1")


@pytest.mark.parametrize("ip", ["unknown", "203.0.113.7, 10.0.0.1", "10.0.0.1:54321"])
def test_ip_taken_as_given(otpd, uniq, ip):
    # COMPAT.md validates phone, email, chat_id and lifetime, and says nothing of `ip`:
    # the old service stored whatever string it got (a proxy's X-Forwarded-For list,
    # "unknown"...), and a client of the old service must not notice the switch.
    otpd.send_ok("sms", uniq.phone(), uniq.code(), ip=ip)
    # with IP rules it is counted like any other ip
    assert_ok(otpd.post("/limit/call", {"ips": [{"minutes": 10, "rate": 1}]}))
    otpd.send_ok("call", uniq.phone(), uniq.code(), ip=ip)
    r = otpd.send("call", uniq.phone(), uniq.code(), ip=ip)
    assert r.status_code == 400 and r.json().get("status_code") == "ip_limit", r.text


def test_email_text_and_html_optional(shared_otpd, uniq):
    for extra in ({}, {"html": "<b>code</b>"}, {"text": "t", "html": "<i>h</i>"}):
        email, code = uniq.email(), uniq.code()
        body = {"email": email, "password": code, "lifetime": 300, "subject": "Hello"}
        body.update(extra)
        assert_ok(shared_otpd.post("/email", body))
        assert shared_otpd.check("email", email, code)


def test_dummy_stores_codes_and_delivers_nothing(otpd_factory, uniq):
    o = otpd_factory(env={"DUMMY": "true", "OTPD_LOG_CODES": "true"})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    assert o.check("sms", phone, code) is True
    # the job is marked skipped, and the log says so
    r = o.get("/admin/outbox")
    jobs = assert_json(r, 200)["content"]["jobs"]
    assert [j["state"] for j in jobs] == ["skipped"], r.text
    o.wait_log(lambda rec: "DUMMY" in " ".join(rec.values()) and "skip" in " ".join(rec.values()))
    assert not any(rec.get("msg") == "deliver" for rec in o.log_records()), o.log_tail()


def test_trimmed_and_cast_values_are_what_is_delivered(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_LOG_CODES": "true"})
    phone = uniq.phone()
    assert_ok(o.post("/sms", {"phone": phone, "password": " 12345 ", "lifetime": 300,
                              "message": "  Your OTP is 12345 \n"}))
    rec = o.wait_log(lambda r: r.get("msg") == "deliver" and r.get("channel") == "sms")
    assert rec["code"] == "12345" and rec["text"] == "Your OTP is 12345", rec
    chat = uniq.chat_id()
    assert_ok(o.post("/telegram", {"chat_id": chat, "password": 777, "lifetime": 300,
                                   "message": 777}))
    rec = o.wait_log(lambda r: r.get("msg") == "deliver" and r.get("channel") == "telegram")
    assert rec["code"] == "777" and rec["text"] == "777", rec
    email = uniq.email()
    assert_ok(o.post("/email", {"email": email, "password": "5555", "lifetime": 300,
                                "subject": "\t Hello ", "text": " t ", "html": " <b>h</b> "}))
    rec = o.wait_log(lambda r: r.get("msg") == "deliver" and r.get("channel") == "email")
    assert (rec["code"], rec["subject"], rec["text"], rec["html"]) == (
        "5555", "Hello", "t", "<b>h</b>"), rec
