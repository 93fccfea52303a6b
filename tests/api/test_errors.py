"""Errors at the HTTP edge and in parsing (COMPAT.md "Requests" and DESIGN "Bad input gets
a clear error"): 404/405 as JSON, malformed or hostile bodies are 400, bodies over
OTPD_MAX_BODY_BYTES are 413 whether sized or chunked, and nothing is ever a 5xx. One
otpd serves the whole module; the last test checks it is still healthy (and teardown that
it exits cleanly, without sanitizer reports)."""

import json

import pytest
import requests

from otpdlib import HTTP_TIMEOUT, assert_error, assert_invalid, assert_json, assert_ok

MAX_BODY = 1024


@pytest.fixture(scope="module")
def o(otpd_module_factory):
    return otpd_module_factory(env={"OTPD_MAX_BODY_BYTES": str(MAX_BODY)})


def raw(o, method, path, data=None, **kw):
    kw.setdefault("timeout", HTTP_TIMEOUT)
    return requests.request(method, o.url(path), data=data, **kw)


# ---- routing ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/nope", "/", "/sms/", "/SMS", "/sms/check/x", "/limit",
                                  "/limit/whatsapp-nope", "/smscheck"])
def test_unknown_path_is_404_json(o, method, path):
    r = raw(o, method, path)
    assert_error(r, 404)


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/sms", {"POST"}),
    ("PUT", "/call", {"POST"}),
    ("GET", "/email", {"POST"}),
    ("DELETE", "/telegram", {"POST"}),
    ("POST", "/sms/check", {"GET"}),
    ("POST", "/call/check", {"GET"}),
    ("PUT", "/email/check", {"GET"}),
    ("POST", "/telegram/check", {"GET"}),
    ("PUT", "/limit/sms", {"GET", "POST"}),
    ("DELETE", "/limit/email", {"GET", "POST"}),
    ("POST", "/target", {"GET"}),
    ("POST", "/password", {"GET"}),
    ("GET", "/telegram/webhook", {"POST"}),
    ("POST", "/health", {"GET"}),
    ("PATCH", "/ready", {"GET"}),
])
def test_wrong_method_is_405_json_with_allow(o, method, path, allow):
    r = raw(o, method, path, data='{"phone":"77011234567"}')
    assert_error(r, 405)
    got = {m.strip() for m in r.headers.get("Allow", "").split(",") if m.strip()}
    assert got - {"HEAD", "OPTIONS"} == allow, r.headers


# ---- malformed bodies -----------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{"phone":',
    '{phone: "77011234567"}',
    "{'phone': '77011234567'}",
    '{"phone":"77011234567",}',
    '{"phone":"77011234567"} trailing',
    '{"phone":"77011234567"}{}',
    '{"password": 01}',
    '{"password": NaN}',
    '{"password": Infinity}',
    '{"a":"\\x41"}',
    '{"a":"unterminated',
    '\x00',
    '{',
    '}',
])
def test_malformed_json_is_400_naming_the_problem(o, text):
    r = raw(o, "POST", "/sms", text)
    err = assert_error(r, 400)
    assert "JSON" in err["message"] or "json" in err["message"], r.text


@pytest.mark.parametrize("text", ['[1, 2]', '[]', '[{"phone":"77011234567"}]', '"phone"', '42',
                                  'true'])
def test_body_that_is_not_an_object_is_400(o, text):
    for method, path in (("POST", "/sms"), ("GET", "/sms/check"), ("POST", "/limit/sms")):
        r = raw(o, method, path, text)
        assert_error(r, 400)


def test_deep_nesting_is_400(o):
    r = raw(o, "POST", "/sms", "[" * 500 + "]" * 500)
    assert_error(r, 400)
    r = raw(o, "POST", "/sms", '{"a":' * 150 + "1" + "}" * 150)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80",
                                 b"\xe2\x82", b"\x80"])
def test_invalid_utf8_in_body_is_400(o, bad):
    body = b'{"phone":"77011234567","password":"1' + bad + b'","lifetime":300,"message":"m"}'
    r = raw(o, "POST", "/sms", body)
    err = assert_error(r, 400)
    assert "UTF-8" in err["message"] or "utf" in err["message"].lower(), r.text
    body = b'{"phone":"77011234567","password":"12345","message":"' + bad + b'","lifetime":1}'
    assert_error(raw(o, "POST", "/sms", body), 400)


@pytest.mark.parametrize("bad", ["%FF", "%C0%AF", "%ED%A0%80", "%E2%82", "%80"])
def test_invalid_utf8_in_query_is_400(o, bad):
    r = raw(o, "GET", "/sms/check?phone=77011234567&password=1" + bad)
    err = assert_error(r, 400)
    assert "UTF-8" in err["message"] or "utf" in err["message"].lower(), r.text
    r = raw(o, "POST", f"/sms?phone=77011234567&password=1&lifetime=300&message=m{bad}")
    assert_error(r, 400)
    r = raw(o, "GET", f"/sms/check?ph{bad}one=1&password=1")
    assert_error(r, 400)


def test_nul_and_lone_surrogate_escapes_are_400(o):
    for text in ('{"phone":"77011234567","password":"12\\u00003","lifetime":300,"message":"m"}',
                 '{"phone":"77011234567","password":"\\ud800","lifetime":300,"message":"m"}'):
        r = raw(o, "POST", "/sms", text)
        assert_error(r, 400)


def test_duplicate_keys_are_400(o):
    text = '{"phone":"77011234567","password":"1","password":"2","lifetime":300,"message":"m"}'
    err = assert_error(raw(o, "POST", "/sms", text), 400)
    assert "duplicate" in err["message"].lower() or "password" in err["message"], err
    text = '{"phone":"77011234567","password":"1"}'
    assert r_ok_status(raw(o, "GET", "/sms/check", text))
    text = '{"phone":"77011234567","phone":"77011234567","password":"1"}'
    assert_error(raw(o, "GET", "/sms/check", text), 400)
    text = '{"ips":[],"ips":[{"minutes":1,"rate":1}]}'
    assert_error(raw(o, "POST", "/limit/sms", text), 400)


def r_ok_status(r):
    return r.status_code == 200 and r.json()["status"] in (True, False)


# ---- huge numbers -------------------------------------------------------------------------

@pytest.mark.parametrize("field,literal", [
    ("lifetime", "1e400"), ("lifetime", "-1e400"), ("lifetime", "99999999999999999999"),
    ("lifetime", "-99999999999999999999"), ("lifetime", "1e308"), ("lifetime", "9223372036854775807"),
    ("lifetime", "-9223372036854775808"), ("lifetime", "4294967597"), ("lifetime", "1e-400"),
    ("password", "1e400"), ("password", "99999999999999999999"),
    ("message", "1e400"), ("phone", "99999999999999999999"),
])
def test_huge_numbers_are_400_never_500(o, field, literal):
    body = {"phone": "77011234567", "password": "12345", "lifetime": 300, "message": "m"}
    text = json.dumps(body).replace(json.dumps(body[field]) if field != "lifetime" else "300",
                                    literal, 1)
    assert literal in text
    r = raw(o, "POST", "/sms", text)
    assert_error(r, 400)


@pytest.mark.parametrize("literal", ["99999999999999999999", "-99999999999999999999", "1e400",
                                     "9223372036854775808", "-9223372036854775809"])
def test_huge_chat_id_is_400(o, literal):
    text = '{"chat_id":%s,"password":"1","lifetime":300,"message":"m"}' % literal
    assert_error(raw(o, "POST", "/telegram", text), 400)
    # as a string it is a well-formed body: the field itself is refused
    text = '{"chat_id":"%s","password":"1","lifetime":300,"message":"m"}' % literal
    assert_invalid(raw(o, "POST", "/telegram", text), "chat_id")


@pytest.mark.parametrize("value", ["99999999999999999999", "1e400", "-99999999999999999999",
                                   "9223372036854775808", "2147483948", "nan", "inf"])
def test_huge_numbers_in_query_are_400(o, value):
    r = raw(o, "POST", "/sms", params={"phone": "77011234567", "password": "1",
                                       "message": "m", "lifetime": value})
    assert_invalid(r, "lifetime")


# ---- body size ----------------------------------------------------------------------------

def sized_body(n):
    """A valid /sms body of exactly n bytes."""
    base = {"phone": "77011234567", "password": "12345", "lifetime": 300, "message": ""}
    pad = n - len(json.dumps(base, separators=(",", ":")))
    assert pad >= 0
    base["message"] = "x" * pad
    text = json.dumps(base, separators=(",", ":"))
    assert len(text) == n
    return text


def test_body_at_the_limit_accepted(o):
    r = raw(o, "POST", "/sms", sized_body(MAX_BODY))
    assert_ok(r)


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY, 64 * MAX_BODY])
def test_body_over_the_limit_with_content_length_is_413(o, size):
    r = raw(o, "POST", "/sms", sized_body(size))
    assert_error(r, 413)
    r = raw(o, "GET", "/sms/check", sized_body(size))
    assert_error(r, 413)


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY, 64 * MAX_BODY])
def test_chunked_body_over_the_limit_is_413(o, size):
    text = sized_body(size).encode()

    def chunks():
        for i in range(0, len(text), 100):
            yield text[i:i + 100]

    r = raw(o, "POST", "/sms", chunks())
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_error(r, 413)


def test_chunked_body_under_the_limit_accepted(o):
    text = sized_body(MAX_BODY).encode()

    def chunks():
        for i in range(0, len(text), 7):
            yield text[i:i + 7]

    r = raw(o, "POST", "/sms", chunks())
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_ok(r)


# ---- odd requests: a clear 4xx, never a 5xx -------------------------------------------------

def test_too_many_query_parameters_is_4xx(o):
    params = "&".join(f"k{i}=v" for i in range(200))
    r = raw(o, "GET", "/sms/check?" + params)
    assert 400 <= r.status_code < 500, r.text
    assert_json(r, r.status_code)


@pytest.mark.parametrize("query", ["phone", "phone=&password=", "=&=", "&&&", "phone=%",
                                   "phone=%zz&password=1", "a[]=1&a[]=2", "phone[]=77011234567"])
def test_odd_query_strings_never_5xx(o, query):
    r = raw(o, "GET", "/sms/check?" + query)
    assert 200 <= r.status_code < 500, r.text
    assert_json(r, r.status_code)


def test_server_still_healthy(o, uniq):
    assert_ok(o.get("/health"))
    assert_ok(o.get("/ready"))
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    assert o.check("sms", phone, code) is True
    assert not any(rec.get("level") == "error" for rec in o.log_records()), o.log_tail()
