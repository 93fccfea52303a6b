"""Bad and missing input on the compat endpoints (COMPAT.md "Requests" and "Responses"):
the exact missing-field answer and the order fields are checked in, white space counts
as missing, and what has no sensible cast is a 400 naming the field."""

import pytest

from otpdlib import TARGET_FIELD, assert_invalid, assert_missing, assert_ok, send_body

# COMPAT.md: "Fields are checked in the order: ..."
SEND_ORDER = {
    "sms": ["phone", "password", "message", "lifetime"],
    "call": ["phone", "password", "lifetime"],
    "email": ["email", "password", "subject", "lifetime"],
    "telegram": ["chat_id", "password", "message", "lifetime"],
}
CHECK_ORDER = {
    "sms": ["phone", "password"],
    "call": ["phone", "password"],
    "email": ["email", "password"],
    "telegram": ["chat_id", "password"],
}
VALID = {"phone": "77011234567", "email": "foobar@example.com", "chat_id": "1234567890",
         "password": "12345", "message": "Your OTP is 12345", "subject": "Hello",
         "lifetime": 300}

CHANNELS = list(SEND_ORDER)


@pytest.mark.parametrize("channel", CHANNELS)
def test_send_missing_fields_in_order(shared_otpd, channel):
    order = SEND_ORDER[channel]
    # no body at all, then an empty object, then each field added in turn
    assert_missing(shared_otpd.post("/" + channel), order[0])
    body = {}
    for field in order:
        assert_missing(shared_otpd.post("/" + channel, body), field)
        body[field] = VALID[field]
    assert_ok(shared_otpd.post("/" + channel, body))


@pytest.mark.parametrize("channel", CHANNELS)
def test_send_missing_field_reported_first_in_order_whatever_else_is_missing(shared_otpd,
                                                                              channel):
    order = SEND_ORDER[channel]
    # leave out only field i (and everything after it): field i is named
    for i, field in enumerate(order):
        body = {f: VALID[f] for f in order if f != field}
        assert_missing(shared_otpd.post("/" + channel, body), field)
        # also when it comes from the query string route
        params = {f: str(VALID[f]) for f in order[i + 1:]}
        body = {f: VALID[f] for f in order[:i]}
        assert_missing(shared_otpd.post("/" + channel, body, params=params), field)


@pytest.mark.parametrize("channel", CHANNELS)
def test_check_missing_fields_in_order(shared_otpd, channel):
    order = CHECK_ORDER[channel]
    path = f"/{channel}/check"
    assert_missing(shared_otpd.get(path), order[0])
    assert_missing(shared_otpd.get(path, {}), order[0])
    assert_missing(shared_otpd.get(path, {"password": "12345"}), order[0])
    assert_missing(shared_otpd.get(path, {order[0]: VALID[order[0]]}), "password")
    assert_missing(shared_otpd.get(path, params={order[0]: VALID[order[0]]}), "password")


@pytest.mark.parametrize("blank", ["", " ", "   ", "\t", " \n\r\t "])
@pytest.mark.parametrize("channel", CHANNELS)
def test_white_space_only_counts_as_missing(shared_otpd, channel, blank):
    order = SEND_ORDER[channel]
    for field in order:
        body = {f: VALID[f] for f in order}
        body[field] = blank
        assert_missing(shared_otpd.post("/" + channel, body), field)
    for field in CHECK_ORDER[channel]:
        body = {f: VALID[f] for f in CHECK_ORDER[channel]}
        body[field] = blank
        assert_missing(shared_otpd.get(f"/{channel}/check", body), field)


def test_white_space_only_in_query_counts_as_missing(shared_otpd):
    assert_missing(shared_otpd.post("/sms", params={"phone": "  ", "password": "1"}), "phone")
    assert_missing(shared_otpd.get("/sms/check", params={"phone": "77011234567",
                                                         "password": " "}), "password")


# ---- invalid values -------------------------------------------------------------------

@pytest.mark.parametrize("phone", [77011234567, 7.5, True, ["77011234567"],
                                   {"a": "77011234567"}, "7701abc4567", "+7701-123-4567",
                                   "1234", "+1234", "123456789012345678901", "++77011234567",
                                   "7701 1234567", "+", "\u0667\u0667\u0660\u0661\u0661"])
def test_invalid_phone(shared_otpd, phone):
    body = send_body("sms", "77011234567", "12345")
    body["phone"] = phone
    assert_invalid(shared_otpd.post("/sms", body), "phone")
    assert_invalid(shared_otpd.post("/call", {**body, "message": None}), "phone")
    assert_invalid(shared_otpd.get("/sms/check", {"phone": phone, "password": "1"}), "phone")


@pytest.mark.parametrize("email", ["foo", "foo@", "@example.com", "foo@bar", "a b@example.com",
                                   "foo@@example.com", 42, True, ["foo@example.com"],
                                   {"e": "foo@example.com"},
                                   "x" * 243 + "@example.com"])  # 255 bytes
def test_invalid_email(shared_otpd, email):
    body = send_body("email", "foobar@example.com", "12345")
    body["email"] = email
    assert_invalid(shared_otpd.post("/email", body), "email")
    assert_invalid(shared_otpd.get("/email/check", {"email": email, "password": "1"}), "email")


def test_longest_email_accepted(shared_otpd):
    email = "x" * 64 + "@" + ("d" * 60 + ".") * 3 + "d" * 2 + ".com"  # 254 bytes
    assert len(email) == 254
    shared_otpd.send_ok("email", email, "12345")
    assert shared_otpd.check("email", email, "12345")


@pytest.mark.parametrize("chat_id", ["abc", "12.5", 12.5, "1e5", True, [123], {"id": 1},
                                     "12 34", "0x10", "99999999999999999999"])
def test_invalid_chat_id(shared_otpd, chat_id):
    body = send_body("telegram", "1", "12345")
    body["chat_id"] = chat_id
    assert_invalid(shared_otpd.post("/telegram", body), "chat_id")
    assert_invalid(shared_otpd.get("/telegram/check", {"chat_id": chat_id, "password": "1"}),
                   "chat_id")


@pytest.mark.parametrize("lifetime", [0, -1, 86401, "abc", "", True, False, [], [300], {},
                                      {"s": 300}, "0", "-5", "86401", "300abc", 0.5, -0.5,
                                      1e10])
def test_invalid_lifetime(shared_otpd, lifetime):
    body = send_body("sms", "77011234567", "12345", lifetime=lifetime)
    r = shared_otpd.post("/sms", body)
    if lifetime == "":
        assert_missing(r, "lifetime")  # an empty string counts as missing
    else:
        assert_invalid(r, "lifetime")


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("password", [{"p": "12345"}, ["12345"], [], {}, True, False])
def test_password_without_a_cast_rejected(shared_otpd, channel, password):
    body = send_body(channel, VALID[TARGET_FIELD[channel]], "12345")
    body["password"] = password
    assert_invalid(shared_otpd.post("/" + channel, body), "password")
    r = shared_otpd.get(f"/{channel}/check", {TARGET_FIELD[channel]: VALID[TARGET_FIELD[channel]],
                                               "password": password})
    assert_invalid(r, "password")


@pytest.mark.parametrize("value", [{"m": 1}, ["hi"], True])
def test_message_and_subject_without_a_cast_rejected(shared_otpd, value):
    body = send_body("sms", "77011234567", "12345")
    body["message"] = value
    assert_invalid(shared_otpd.post("/sms", body), "message")
    body = send_body("telegram", "1234567890", "12345")
    body["message"] = value
    assert_invalid(shared_otpd.post("/telegram", body), "message")
    body = send_body("email", "foobar@example.com", "12345")
    body["subject"] = value
    assert_invalid(shared_otpd.post("/email", body), "subject")


def test_first_bad_field_in_order_is_reported(shared_otpd):
    # phone is checked before lifetime: a bad phone and a bad lifetime name the phone
    r = shared_otpd.post("/sms", {"phone": "abc", "password": "1", "message": "m",
                                  "lifetime": "abc"})
    assert_invalid(r, "phone")
    # a missing field before a bad one: the missing one
    r = shared_otpd.post("/sms", {"phone": "77011234567", "message": "m", "lifetime": "abc"})
    assert_missing(r, "password")


def test_max_lifetime_is_configurable(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_LIFETIME": "600"})
    o.send_ok("sms", uniq.phone(), uniq.code(), lifetime=600)
    assert_invalid(o.send("sms", uniq.phone(), uniq.code(), lifetime=601), "lifetime")


@pytest.mark.parametrize("value", [{"t": "x"}, ["x"], True])
def test_optional_fields_without_a_cast_rejected(shared_otpd, uniq, value):
    for field in ("text", "html"):
        body = send_body("email", uniq.email(), "12345")
        body[field] = value
        assert_invalid(shared_otpd.post("/email", body), field)
    body = send_body("sms", uniq.phone(), "12345")
    body["ip"] = value
    assert_invalid(shared_otpd.post("/sms", body), "ip")
