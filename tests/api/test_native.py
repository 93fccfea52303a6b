"""The native dialect (POST /otp/send, /otp/verify, /otp/resend, /otp/cancel, GET
/otp/status) over real HTTP, on every backend.

One otpd per module (native_otpd: OTPD_ADMIN_TOKEN and the log provider showing codes);
each test makes its own app and key over /admin and uses fresh recipients, so tests never
see each other's verifications. The code the server made is learnt from the log
provider's deliver line of the verification's job (Otpd.code_of). Auth in its forms, app
isolation and the admin endpoints are in test_admin_apps.py; idempotency and races in
test_native_idempotency.py.
"""

import re
import string
import time

import pytest

from otpdlib import (ADMIN_TOKEN, assert_json, assert_native_error, unique_chat_id,
                     unique_native_email, unique_phone)

SPECIAL = "!#$%&*+-=?@_"
LOOKALIKES = "0Oo1lIi"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
VIEW_KEYS = ["verification_id", "appid", "status", "channel", "recipient", "created_at",
             "expires_at", "expires_in", "attempts", "remaining_attempts", "sends",
             "sends_left", "next_resend_at", "fallback"]
# An app whose verifications may be sent again at once (resend tests).
NO_COOLDOWN = {"resend_cooldown": 0}


@pytest.fixture(scope="module")
def o(native_otpd):
    return native_otpd


@pytest.fixture
def app(o):
    return o.new_app()


def phone():
    return unique_phone()


def plus(p):
    return "+" + p


def epoch(t):
    return int(time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)


def wrong(code):
    """A code of the same shape that is not `code`."""
    return ("1" if code[0] != "1" else "2") + code[1:]


# ---- send ------------------------------------------------------------------------------

def test_send_answers_the_verification_and_delivers_a_code(o, app):
    p = phone()
    r = app.send(plus(p), channel="sms")
    body = assert_json(r, 200)
    assert list(body) == VIEW_KEYS, r.text
    assert re.fullmatch(r"otp_[0-9a-f]{32}", body["verification_id"]), r.text
    assert body["appid"] == app.id
    assert body["status"] == "pending" and body["channel"] == "sms"
    assert body["recipient"] == plus(p)
    assert ISO.fullmatch(body["created_at"]) and ISO.fullmatch(body["expires_at"])
    assert epoch(body["expires_at"]) - epoch(body["created_at"]) == 300
    assert 295 <= body["expires_in"] <= 300
    assert body["attempts"] == 0 and body["remaining_attempts"] == 5
    assert body["sends"] == 1 and body["sends_left"] == 4
    assert epoch(body["next_resend_at"]) - epoch(body["created_at"]) == 30
    assert body["fallback"] == []
    d = o.delivery_of(body["verification_id"])
    assert d["channel"] == "sms" and d["provider"] == "log"
    assert re.fullmatch(r"[0-9]{6}", d["code"]), d
    assert d["text"] == f"Your code is {d['code']}"
    # the code is never in the answer
    assert d["code"] not in r.text


def test_send_defaults_to_sms_and_takes_a_phone_without_plus(o, app):
    p = phone()
    body = app.send_ok(p)
    assert body["channel"] == "sms" and body["recipient"] == plus(p)
    assert o.delivery_of(body["verification_id"])["channel"] == "sms"


@pytest.mark.parametrize("channel,make,shown", [
    ("call", phone, plus),
    ("whatsapp", phone, plus),
    ("email", unique_native_email, str),
    ("telegram", unique_chat_id, str),
])
def test_send_on_each_channel(o, app, channel, make, shown):
    target = make()
    body = app.send_ok(target, channel=channel)
    assert body["channel"] == channel and body["recipient"] == shown(target)
    d = o.delivery_of(body["verification_id"])
    assert d["channel"] == channel
    code = d["code"]
    assert re.fullmatch(r"[0-9]{6}", code)
    if channel == "email":
        assert code in d["subject"] and code in d["text"]
    assert app.verify_ok(body["verification_id"], code)["verified"] is True


@pytest.mark.parametrize("body,status,error,field", [
    ({}, 400, "missing_parameter", "recipient"),
    ({"recipient": ""}, 400, "missing_parameter", "recipient"),
    ({"recipient": "12ab"}, 400, "invalid_parameter", "recipient"),
    ({"recipient": 77011234567}, 400, "invalid_parameter", "recipient"),
    ({"recipient": "+7701", "channel": "sms"}, 400, "invalid_parameter", "recipient"),
    ({"recipient": "nobody", "channel": "email"}, 400, "invalid_parameter", "recipient"),
    ({"recipient": "chat", "channel": "telegram"}, 400, "invalid_parameter", "recipient"),
    ({"recipient": "+77011234567", "channel": "fax"}, 400, "invalid_parameter", "channel"),
    ({"recipient": "+77011234567", "channel": 1}, 400, "invalid_parameter", "channel"),
    ({"recipient": "+77011234567", "code_length": 3}, 400, "invalid_parameter", "code_length"),
    ({"recipient": "+77011234567", "code_length": 33}, 400, "invalid_parameter", "code_length"),
    ({"recipient": "+77011234567", "code_length": "six"}, 400, "invalid_parameter",
     "code_length"),
    ({"recipient": "+77011234567", "allow_digits": "yes"}, 400, "invalid_parameter",
     "allow_digits"),
    ({"recipient": "+77011234567", "allow_upper_case": 1}, 400, "invalid_parameter",
     "allow_upper_case"),
    ({"recipient": "+77011234567", "exclude_lookalikes": []}, 400, "invalid_parameter",
     "exclude_lookalikes"),
    ({"recipient": "+77011234567", "validity_period": 0}, 400, "invalid_parameter",
     "validity_period"),
    ({"recipient": "+77011234567", "validity_period": 604801}, 400, "invalid_parameter",
     "validity_period"),
    ({"recipient": "+77011234567", "max_wrong_attempts": -1}, 400, "invalid_parameter",
     "max_wrong_attempts"),
    ({"recipient": "+77011234567", "max_wrong_attempts": 1001}, 400, "invalid_parameter",
     "max_wrong_attempts"),
    ({"recipient": "+77011234567", "lang": "e n"}, 400, "invalid_parameter", "lang"),
    ({"recipient": "+77011234567", "lang": "x" * 16}, 400, "invalid_parameter", "lang"),
    ({"recipient": "+77011234567", "from": "x" * 32}, 400, "invalid_parameter", "from"),
    ({"recipient": "+77011234567", "message": "no code here"}, 400, "invalid_parameter",
     "message"),
    ({"recipient": "+77011234567", "message": "x{code}" + "x" * 1224}, 400,
     "invalid_parameter", "message"),
    ({"recipient": "+77011234567", "message": "{code}", "template_id": "t"}, 400,
     "invalid_parameter", "template_id"),
    ({"recipient": "+77011234567", "template_id": "nope"}, 400, "invalid_parameter",
     "template_id"),
    ({"recipient": "+77011234567", "recipient_ip": {"a": 1}}, 400, "invalid_parameter",
     "recipient_ip"),
    ({"recipient": "+77011234567", "otp_code": "1234"}, 403, "forbidden", "otp_code"),
    ({"recipient": "+77011234567", "fallback": "call"}, 400, "invalid_parameter", "fallback"),
    ({"recipient": "+77011234567", "fallback": ["call"] * 5}, 400, "invalid_parameter",
     "fallback"),
    ({"recipient": "+77011234567", "fallback": [7]}, 400, "invalid_parameter", "fallback[0]"),
    ({"recipient": "+77011234567", "fallback": ["call", "fax"]}, 400, "invalid_parameter",
     "fallback[1].channel"),
    ({"recipient": "+77011234567", "fallback": ["email"]}, 400, "invalid_parameter",
     "fallback[0]"),
    ({"recipient": "+77011234567", "fallback": [{"channel": "email", "recipient": "x"}]},
     400, "invalid_parameter", "fallback[0].recipient"),
    ({"recipient": "+77011234567", "fallback": [{"recipient": "a@b.example"}]}, 400,
     "missing_parameter", "fallback[0].channel"),
])
def test_send_refuses_bad_fields_naming_them(o, app, body, status, error, field):
    r = app.post("/otp/send", body)
    assert_native_error(r, status, error, field)


def test_send_refuses_all_alphabets_off(app):
    r = app.send(plus(phone()), allow_digits=False)
    assert_native_error(r, 400, "invalid_parameter", "allow_digits")
    r = app.send(plus(phone()), allow_digits=False, allow_special_chars=False)
    assert_native_error(r, 400, "invalid_parameter", "allow_digits")


def test_nothing_is_delivered_for_a_refused_send(o, app):
    p = phone()
    assert_native_error(app.send(plus(p), code_length=2), 400, "invalid_parameter",
                        "code_length")
    # a later good send to the same recipient is its first delivery
    body = app.send_ok(plus(p))
    o.delivery_of(body["verification_id"])
    assert len(o.deliveries(p)) == 1


# ---- the request's framing ------------------------------------------------------------------

def test_wrong_content_type_is_refused(app):
    for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        r = app.post("/otp/send", None, data='{"recipient":"+77011234567"}',
                     headers={"Content-Type": ct})
        assert_native_error(r, 400, "invalid_json", "Content-Type")
    r = app.post("/otp/send", None, data='{"recipient":"+77011234567"}')
    assert_native_error(r, 400, "invalid_json", "Content-Type")
    # parameters on the media type are fine
    r = app.post("/otp/send", None, data='{"recipient":"+77011234567"}',
                 headers={"Content-Type": "application/json; charset=utf-8"})
    assert assert_json(r, 200)["status"] == "pending"


@pytest.mark.parametrize("data", [
    '{"recipient": "+77011234567"', "[1, 2]", '"text"', "recipient=77011234567",
    '{"recipient": "+77011234567", "recipient": "+77011234568"}', b'{"a": "\xff"}',
])
def test_bad_json_is_refused(app, data):
    r = app.post("/otp/send", None, data=data, headers={"Content-Type": "application/json"})
    body = assert_native_error(r, 400, "invalid_json", False)
    assert "body" in body["message"]


def test_oversized_body_is_413_in_the_native_shape(app):
    big = '{"recipient": "+77011234567", "message": "' + "x" * 70000 + '{code}"}'
    r = app.post("/otp/send", None, data=big, headers={"Content-Type": "application/json"})
    assert_native_error(r, 413, "too_large", False)


def test_wrong_method_is_405_with_allow(app):
    for method, path, allow in (("GET", "/otp/send", "POST"), ("DELETE", "/otp/verify", "POST"),
                                ("PUT", "/otp/resend", "POST"), ("GET", "/otp/cancel", "POST"),
                                ("POST", "/otp/status", "GET")):
        r = app.request(method, path)
        assert_native_error(r, 405, "method_not_allowed", False)
        assert r.headers.get("Allow") == allow, (method, path, r.headers)


def test_fields_may_come_in_the_query_string(o, app):
    p = phone()
    r = app.post("/otp/send", None, params={"recipient": plus(p), "channel": "call"})
    body = assert_json(r, 200)
    assert body["channel"] == "call"
    st = app.get("/otp/status", {"verification_id": body["verification_id"]})
    assert assert_json(st, 200)["verification_id"] == body["verification_id"]


# ---- code options --------------------------------------------------------------------------

def delivered(o, app, **fields):
    body = app.send_ok(plus(phone()), **fields)
    return o.code_of(body["verification_id"])


@pytest.mark.parametrize("length", [4, 5, 10, 32])
def test_code_length(o, app, length):
    code = delivered(o, app, code_length=length)
    assert len(code) == length and code.isdigit(), code


@pytest.mark.parametrize("options,alphabet", [
    ({"allow_digits": False, "allow_upper_case": True}, string.ascii_uppercase),
    ({"allow_digits": False, "allow_lower_case": True}, string.ascii_lowercase),
    ({"allow_digits": False, "allow_special_chars": True}, SPECIAL),
    ({"allow_upper_case": True, "allow_lower_case": True},
     string.digits + string.ascii_letters),
    ({"allow_upper_case": True, "allow_lower_case": True, "allow_special_chars": True},
     string.digits + string.ascii_letters + SPECIAL),
])
def test_code_alphabets(o, app, options, alphabet):
    seen = set()
    for _ in range(3):
        code = delivered(o, app, code_length=32, **options)
        assert len(code) == 32 and set(code) <= set(alphabet), code
        seen |= set(code)
    # 96 characters drawn: every alphabet asked for shows up
    for part in (string.digits, string.ascii_uppercase, string.ascii_lowercase, SPECIAL):
        if set(part) <= set(alphabet):
            assert seen & set(part), (options, seen)


def test_exclude_lookalikes(o, app):
    allowed = set(string.digits + string.ascii_letters) - set(LOOKALIKES)
    for _ in range(3):
        code = delivered(o, app, code_length=32, allow_upper_case=True, allow_lower_case=True,
                         exclude_lookalikes=True)
        assert len(code) == 32 and set(code) <= allowed, code
    code = delivered(o, app, code_length=32, exclude_lookalikes=True)
    assert set(code) <= set("23456789"), code


def test_generated_codes_verify(o, app):
    body = app.send_ok(plus(phone()), code_length=12, allow_upper_case=True,
                       allow_special_chars=True)
    code = o.code_of(body["verification_id"])
    assert app.verify_ok(body["verification_id"], code)["verified"] is True


def test_app_settings_are_the_defaults_a_request_narrows(o):
    app = o.new_app({"code_length": 8, "allow_digits": False, "allow_upper_case": True,
                     "validity_period": 120, "max_wrong_attempts": 2})
    body = app.send_ok(plus(phone()))
    assert epoch(body["expires_at"]) - epoch(body["created_at"]) == 120
    assert body["remaining_attempts"] == 2
    code = o.code_of(body["verification_id"])
    assert len(code) == 8 and set(code) <= set(string.ascii_uppercase), code
    # the request overrides each default
    body = app.send_ok(plus(phone()), code_length=5, allow_digits=True, allow_upper_case=False,
                       validity_period=60, max_wrong_attempts=7)
    assert epoch(body["expires_at"]) - epoch(body["created_at"]) == 60
    assert body["remaining_attempts"] == 7
    code = o.code_of(body["verification_id"])
    assert len(code) == 5 and code.isdigit(), code


def test_app_setting_change_applies_to_the_next_send(o, app):
    r = o.admin("PATCH", f"/admin/apps/{app.id}", {"settings": {"code_length": 9}})
    assert assert_json(r, 200)["settings"]["code_length"] == 9
    assert len(delivered(o, app)) == 9


def test_validity_period_and_max_wrong_attempts_per_request(o, app):
    body = app.send_ok(plus(phone()), validity_period=3600, max_wrong_attempts=0)
    assert epoch(body["expires_at"]) - epoch(body["created_at"]) == 3600
    assert 3595 <= body["expires_in"] <= 3600
    # 0: unlimited
    assert body["remaining_attempts"] is None
    code = o.code_of(body["verification_id"])
    for i in range(8):
        v = app.verify_ok(body["verification_id"], wrong(code))
        assert v["verified"] is False and v["status"] == "pending"
        assert v["attempts"] == i + 1 and v["remaining_attempts"] is None
    assert app.verify_ok(body["verification_id"], code)["verified"] is True


# ---- custom codes ------------------------------------------------------------------------

def test_custom_code_only_when_the_app_allows_it(o, app):
    p = phone()
    r = app.send(plus(p), otp_code="4242")
    assert_native_error(r, 403, "forbidden", "otp_code")
    assert o.deliveries(p) == []

    allowing = o.new_app({"allow_custom_code": True})
    for code in ("4242", "Hello-World_99", "x" * 64):
        body = allowing.send_ok(plus(phone()), otp_code=code)
        assert o.code_of(body["verification_id"]) == code
        assert allowing.verify_ok(body["verification_id"], code)["verified"] is True
    # a number is taken as its text
    body = allowing.send_ok(plus(phone()), otp_code=90210)
    assert o.code_of(body["verification_id"]) == "90210"
    r = allowing.send(plus(phone()), otp_code="x" * 65)
    assert_native_error(r, 400, "invalid_parameter", "otp_code")


# ---- templates --------------------------------------------------------------------------

TEMPLATES = {
    "default": {"en": "Default {code}", "pt": "Padrao {code}"},
    "login": {"en": "Login code {code}, {minutes} min", "pt": "Codigo {code}",
              "pt-BR": "Codigo BR {code}"},
    "reset": {"de": "Reset {code}"},
}


@pytest.mark.parametrize("fields,text", [
    ({}, "Default {code}"),
    ({"lang": "pt"}, "Padrao {code}"),
    ({"template_id": "login"}, None),            # no language: its first text
    ({"template_id": "login", "lang": "en"}, "Login code {code}, 5 min"),
    ({"template_id": "login", "lang": "pt-BR"}, "Codigo BR {code}"),
    ({"template_id": "login", "lang": "pt-PT"}, "Codigo {code}"),
    ({"template_id": "reset", "lang": "en"}, "Reset {code}"),
    ({"message": "Your {code} for Acme"}, "Your {code} for Acme"),
])
def test_templates_per_template_id_and_lang(o, fields, text):
    app = o.new_app({"templates": TEMPLATES})
    body = app.send_ok(plus(phone()), **fields)
    d = o.delivery_of(body["verification_id"])
    if text is None:
        assert d["text"] in ("Login code {c}, 5 min".format(c=d["code"]),
                             "Codigo {c}".format(c=d["code"]),
                             "Codigo BR {c}".format(c=d["code"])), d
    else:
        assert d["text"] == text.replace("{code}", d["code"]), d


def test_unknown_template_id_is_refused(o):
    app = o.new_app({"templates": TEMPLATES})
    r = app.send(plus(phone()), template_id="signup")
    assert_native_error(r, 400, "invalid_parameter", "template_id")


def test_without_templates_the_channel_default_is_used(o, app):
    d = o.delivery_of(app.send_ok(plus(phone()), lang="de")["verification_id"])
    assert d["text"] == f"Your code is {d['code']}"


# ---- channels the app may use ---------------------------------------------------------------

def test_channel_not_allowed(o):
    app = o.new_app({"channels": ["sms", "call"]})
    e = unique_native_email()
    r = app.send(e, channel="email")
    assert_native_error(r, 400, "channel_not_allowed", "channel")
    assert o.deliveries(e) == []
    r = app.send(plus(phone()), channel="whatsapp")
    assert_native_error(r, 400, "channel_not_allowed", "channel")
    r = app.send(plus(phone()), fallback=["call", "whatsapp"])
    assert_native_error(r, 400, "channel_not_allowed", "fallback[1]")
    body = app.send_ok(plus(phone()), channel="call", fallback=["sms"])
    assert body["channel"] == "call" and body["fallback"] == ["sms"]


# ---- verify ------------------------------------------------------------------------------

def test_verify_wrong_then_right(o, app):
    body = app.send_ok(plus(phone()))
    vid = body["verification_id"]
    code = o.code_of(vid)
    v = app.verify_ok(vid, wrong(code))
    assert v["verified"] is False and v["status"] == "pending"
    assert v["attempts"] == 1 and v["remaining_attempts"] == 4
    assert list(v) == VIEW_KEYS + ["verified"]
    v = app.verify_ok(vid, code)
    assert v["verified"] is True and v["status"] == "approved"
    assert v["attempts"] == 1 and v["remaining_attempts"] == 0
    assert v["sends_left"] == 0 and v["next_resend_at"] is None and v["expires_in"] == 0
    # consumed on approval (the default): the code does not verify twice
    v = app.verify_ok(vid, code)
    assert v["verified"] is False and v["status"] == "approved"
    assert app.status_ok(vid)["status"] == "approved"


def test_code_reusable_until_expiry_when_not_consumed(o):
    app = o.new_app({"consume_on_approval": False})
    body = app.send_ok(plus(phone()))
    code = o.code_of(body["verification_id"])
    for _ in range(2):
        v = app.verify_ok(body["verification_id"], code)
        assert v["verified"] is True and v["status"] == "approved"


def test_max_attempts_reached(o, app):
    body = app.send_ok(plus(phone()), max_wrong_attempts=3)
    vid = body["verification_id"]
    assert body["remaining_attempts"] == 3
    code = o.code_of(vid)
    for i, (status, left) in enumerate([("pending", 2), ("pending", 1),
                                        ("max_attempts_reached", 0)]):
        v = app.verify_ok(vid, wrong(code))
        assert v["verified"] is False and v["status"] == status, v
        assert v["attempts"] == i + 1 and v["remaining_attempts"] == left, v
    # dead even for the right code, and nothing more is counted
    v = app.verify_ok(vid, code)
    assert v["verified"] is False and v["status"] == "max_attempts_reached"
    assert v["attempts"] == 3
    st = app.status_ok(vid)
    assert st["status"] == "max_attempts_reached" and st["sends_left"] == 0
    assert_native_error(app.resend(vid), 409, "not_pending", "verification_id")


def test_expired(o, app):
    body = app.send_ok(plus(phone()), validity_period=1)
    vid = body["verification_id"]
    code = o.code_of(vid)
    deadline = time.monotonic() + 30
    while app.status_ok(vid)["status"] == "pending":   # time itself is the subject
        assert time.monotonic() < deadline, "never expired"
        time.sleep(0.2)
    st = app.status_ok(vid)
    assert st["status"] == "expired" and st["expires_in"] == 0
    assert st["remaining_attempts"] == 0 and st["sends_left"] == 0
    v = app.verify_ok(vid, code)
    assert v["verified"] is False and v["status"] == "expired"
    assert_native_error(app.resend(vid), 409, "not_pending", "verification_id")
    assert_native_error(app.cancel(vid), 409, "not_pending", "verification_id")


def test_verify_refuses_bad_fields(app):
    vid = app.send_ok(plus(phone()))["verification_id"]
    assert_native_error(app.verify(vid), 400, "missing_parameter", "otp_code")
    assert_native_error(app.verify(vid, ""), 400, "missing_parameter", "otp_code")
    assert_native_error(app.verify(None, "123456"), 400, "missing_parameter", "verification_id")
    assert_native_error(app.verify(vid, "1" * 65), 400, "invalid_parameter", "otp_code")
    assert_native_error(app.verify(12, "123456"), 400, "invalid_parameter", "verification_id")
    assert_native_error(app.verify(vid, "123456", channel="fax"), 400, "invalid_parameter",
                        "channel")
    assert_native_error(app.verify("otp_" + "0" * 32, "123456"), 404, "not_found",
                        "verification_id")
    assert_native_error(app.verify(None, "123456", recipient="12ab"), 400, "invalid_parameter",
                        "recipient")
    # none of that counted against the verification
    assert app.status_ok(vid)["attempts"] == 0


def test_verify_by_recipient_checks_the_latest(o, app):
    p = phone()
    first = app.send_ok(plus(p))
    second = app.send_ok(plus(p))
    c1, c2 = o.code_of(first["verification_id"]), o.code_of(second["verification_id"])
    if c1 == c2:
        pytest.skip("two equal random codes")
    # the older code is not the latest's: a wrong code, counted against the latest only
    v = app.verify_ok(None, c1, recipient=plus(p))
    assert v["verification_id"] == second["verification_id"] and v["verified"] is False
    assert v["attempts"] == 1
    assert app.status_ok(first["verification_id"])["attempts"] == 0
    v = app.verify_ok(None, c2, recipient=p)
    assert v["verification_id"] == second["verification_id"] and v["verified"] is True
    # nothing pending is left for that recipient... but the first one, still pending
    v = app.verify_ok(None, c1, recipient=plus(p))
    assert v["verification_id"] == first["verification_id"] and v["verified"] is True
    r = app.verify(None, c1, recipient=plus(p))
    assert_native_error(r, 404, "not_found", "recipient")


def test_verify_by_recipient_on_other_channels(o, app):
    e = unique_native_email()
    body = app.send_ok(e, channel="email")
    code = o.code_of(body["verification_id"])
    v = app.verify_ok(None, code, recipient=e)   # an address: the email channel
    assert v["verified"] is True and v["verification_id"] == body["verification_id"]
    chat = unique_chat_id()
    body = app.send_ok(chat, channel="telegram")
    code = o.code_of(body["verification_id"])
    v = app.verify_ok(None, code, recipient=chat, channel="telegram")
    assert v["verified"] is True
    # a channel named narrows the search
    p = phone()
    body = app.send_ok(plus(p), channel="call")
    code = o.code_of(body["verification_id"])
    assert_native_error(app.verify(None, code, recipient=plus(p), channel="sms"), 404,
                        "not_found", "recipient")
    assert app.verify_ok(None, code, recipient=plus(p))["verified"] is True


def test_verify_by_recipient_unknown_is_404(app):
    r = app.verify(None, "123456", recipient=plus(phone()))
    assert_native_error(r, 404, "not_found", "recipient")


# ---- resend ------------------------------------------------------------------------------

def test_resend_cooldown_is_429_with_retry_after(o, app):
    body = app.send_ok(plus(phone()))
    r = app.resend(body["verification_id"])
    err = assert_native_error(r, 429, "resend_cooldown", False)
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 30 and err["retry_after"] == retry, r.text
    st = app.status_ok(body["verification_id"])
    assert st["sends"] == 1 and st["sends_left"] == 4


def test_resend_delivers_the_same_code_until_max_sends(o):
    app = o.new_app(dict(NO_COOLDOWN, max_sends=3))
    p = phone()
    body = app.send_ok(plus(p))
    vid = body["verification_id"]
    assert body["sends_left"] == 2
    code = o.code_of(vid)
    for sends, left in ((2, 1), (3, 0)):
        v = assert_json(app.resend(vid), 200)
        assert v["sends"] == sends and v["sends_left"] == left and v["status"] == "pending"
        assert v["verification_id"] == vid
    assert v["next_resend_at"] is None
    err = assert_native_error(app.resend(vid), 429, "max_sends_reached", False)
    assert "Retry-After" not in app.resend(vid).headers, err
    got = o.wait_deliveries(p, 3)
    assert [d["code"] for d in got] == [code] * 3
    assert assert_json(app.verify(vid, code), 200)["verified"] is True
    time.sleep(1.0)   # a 4th delivery would come within one worker poll
    assert len(o.deliveries(p)) == 3


def test_resend_moves_through_the_fallback_list(o):
    app = o.new_app(NO_COOLDOWN)
    p, e = phone(), unique_native_email()
    body = app.send_ok(plus(p), channel="sms",
                       fallback=["call", {"channel": "email", "recipient": e}, "whatsapp"])
    vid = body["verification_id"]
    assert body["fallback"] == ["call", "email", "whatsapp"]
    code = o.code_of(vid)
    v = assert_json(app.resend(vid, next_channel=True), 200)
    assert v["channel"] == "call" and v["recipient"] == plus(p)
    assert v["fallback"] == ["email", "whatsapp"] and v["sends"] == 2
    v = assert_json(app.resend(vid, next_channel=True), 200)
    assert v["channel"] == "email" and v["recipient"] == e and v["fallback"] == ["whatsapp"]
    v = assert_json(app.resend(vid, next_channel=True), 200)
    assert v["channel"] == "whatsapp" and v["recipient"] == plus(p) and v["fallback"] == []
    r = app.resend(vid, next_channel=True)
    assert_native_error(r, 409, "no_fallback", "next_channel")
    # a plain resend goes where it went last
    v = assert_json(app.resend(vid), 200)
    assert v["channel"] == "whatsapp" and v["sends"] == 5
    got = o.wait_deliveries(p, 4)
    assert [d["channel"] for d in got] == ["sms", "call", "whatsapp", "whatsapp"]
    assert all(d["code"] == code for d in got)
    mail = o.wait_deliveries(e, 1)
    assert len(mail) == 1 and mail[0]["channel"] == "email" and mail[0]["code"] == code
    assert app.status_ok(vid)["channel"] == "whatsapp"
    assert app.verify_ok(vid, code)["verified"] is True


def test_resend_to_a_named_channel(o):
    app = o.new_app(NO_COOLDOWN)
    p = phone()
    vid = app.send_ok(plus(p), fallback=["call", "whatsapp"])["verification_id"]
    v = assert_json(app.resend(vid, channel="whatsapp"), 200)
    assert v["channel"] == "whatsapp" and v["fallback"] == []
    r = app.resend(vid, channel="telegram")
    assert_native_error(r, 409, "no_fallback", "channel")
    # the channel it went to last is always allowed
    v = assert_json(app.resend(vid, channel="whatsapp"), 200)
    assert v["sends"] == 3
    assert [d["channel"] for d in o.wait_deliveries(p, 3)] == ["sms", "whatsapp", "whatsapp"]


def test_resend_without_fallback_is_409(o):
    app = o.new_app(NO_COOLDOWN)
    vid = app.send_ok(plus(phone()))["verification_id"]
    assert_native_error(app.resend(vid, next_channel=True), 409, "no_fallback", "next_channel")
    assert app.status_ok(vid)["sends"] == 1


def test_resend_refuses_bad_fields(app):
    vid = app.send_ok(plus(phone()))["verification_id"]
    assert_native_error(app.post("/otp/resend", {}), 400, "missing_parameter",
                        "verification_id")
    assert_native_error(app.resend(vid, next_channel="soon"), 400, "invalid_parameter",
                        "next_channel")
    assert_native_error(app.resend(vid, channel="fax"), 400, "invalid_parameter", "channel")
    assert_native_error(app.resend("otp_" + "f" * 32), 404, "not_found", "verification_id")


def test_resend_of_an_approved_verification_is_409(o):
    app = o.new_app(NO_COOLDOWN)
    vid = app.send_ok(plus(phone()))["verification_id"]
    assert app.verify_ok(vid, o.code_of(vid))["verified"] is True
    assert_native_error(app.resend(vid), 409, "not_pending", "verification_id")


# ---- cancel and status -----------------------------------------------------------------------

def test_cancel(o, app):
    body = app.send_ok(plus(phone()))
    vid = body["verification_id"]
    code = o.code_of(vid)
    c = assert_json(app.cancel(vid), 200)
    assert list(c) == VIEW_KEYS
    assert c["status"] == "canceled" and c["verification_id"] == vid
    assert c["remaining_attempts"] == 0 and c["sends_left"] == 0
    assert_native_error(app.cancel(vid), 409, "not_pending", "verification_id")
    v = app.verify_ok(vid, code)
    assert v["verified"] is False and v["status"] == "canceled"
    assert_native_error(app.resend(vid), 409, "not_pending", "verification_id")
    assert app.status_ok(vid)["status"] == "canceled"


def test_cancel_refuses_bad_fields(app):
    assert_native_error(app.post("/otp/cancel", {}), 400, "missing_parameter",
                        "verification_id")
    assert_native_error(app.cancel("otp_" + "a" * 32), 404, "not_found", "verification_id")
    assert_native_error(app.cancel("x" * 100), 400, "invalid_parameter", "verification_id")


def test_status(o, app):
    p = phone()
    body = app.send_ok(plus(p), max_wrong_attempts=4)
    vid = body["verification_id"]
    st = app.status_ok(vid)
    assert list(st) == VIEW_KEYS
    for k in ("verification_id", "appid", "status", "channel", "recipient", "created_at",
              "expires_at", "attempts", "remaining_attempts", "sends", "sends_left",
              "next_resend_at", "fallback"):
        assert st[k] == body[k], k
    app.verify_ok(vid, wrong(o.code_of(vid)))
    st = app.status_ok(vid)
    assert st["attempts"] == 1 and st["remaining_attempts"] == 3
    # GET with a JSON body works too
    r = app.request("GET", "/otp/status", {"verification_id": vid})
    assert assert_json(r, 200)["attempts"] == 1


def test_status_refuses_bad_fields(app):
    assert_native_error(app.get("/otp/status"), 400, "missing_parameter", "verification_id")
    assert_native_error(app.get("/otp/status", {"verification_id": ""}), 400,
                        "missing_parameter", "verification_id")
    assert_native_error(app.status("otp_" + "b" * 32), 404, "not_found", "verification_id")


def test_unknown_native_path_is_404(app):
    r = app.get("/otp/nothing")
    assert r.status_code == 404


# ---- WhatsApp through /otp/send is in test_delivery.py (test_provider_whatsapp) ----------

def test_admin_token_sends_for_a_named_app(o, app):
    """The admin token may act for any app, naming it."""
    p = phone()
    hdr = {"Authorization": "Bearer " + ADMIN_TOKEN}
    r = o.post("/otp/send", {"recipient": plus(p)}, headers=hdr)
    assert_native_error(r, 400, "missing_parameter", "appid")
    r = o.post("/otp/send", {"recipient": plus(p), "appid": "app_" + "0" * 32}, headers=hdr)
    assert_native_error(r, 404, "not_found", "appid")
    body = assert_json(o.post("/otp/send", {"recipient": plus(p), "appid": app.id},
                              headers=hdr), 200)
    assert body["appid"] == app.id
    vid = body["verification_id"]
    # the app's own key sees it
    assert app.status_ok(vid)["appid"] == app.id
    # the admin sees it without naming the app, or naming it
    assert assert_json(o.get("/otp/status", params={"verification_id": vid}, headers=hdr),
                       200)["verification_id"] == vid
    # verifying by recipient needs the app
    code = o.code_of(vid)
    r = o.post("/otp/verify", {"recipient": plus(p), "otp_code": code}, headers=hdr)
    assert_native_error(r, 400, "missing_parameter", "appid")
    r = o.post("/otp/verify", {"recipient": plus(p), "otp_code": code, "appid": app.id},
               headers=hdr)
    assert assert_json(r, 200)["verified"] is True
