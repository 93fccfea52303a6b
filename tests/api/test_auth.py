"""HTTP Basic auth (COMPAT.md "Authentication"): with HTTP_AUTH_USERNAME and
HTTP_AUTH_PASSWORD set, every endpoint but the health checks needs it (401 with
WWW-Authenticate otherwise); the webhook too, unless the webhook secret is set."""

import base64

import pytest
import requests

from otpdlib import HTTP_TIMEOUT, assert_error, assert_json, assert_ok

USER, PASSWORD = "otp-client", "pa55:w0rd-Zq9"

ENDPOINTS = [
    ("POST", "/sms"), ("POST", "/call"), ("POST", "/email"), ("POST", "/telegram"),
    ("GET", "/sms/check"), ("GET", "/call/check"), ("GET", "/email/check"),
    ("GET", "/telegram/check"),
    ("POST", "/limit/sms"), ("POST", "/limit/call"), ("POST", "/limit/email"),
    ("POST", "/limit/telegram"), ("GET", "/limit/sms"), ("GET", "/limit/call"),
    ("GET", "/limit/email"), ("GET", "/limit/telegram"),
    ("GET", "/target"), ("GET", "/password"), ("POST", "/telegram/webhook"),
]


@pytest.fixture(scope="module")
def o(otpd_module_factory):
    return otpd_module_factory(env={"HTTP_AUTH_USERNAME": USER, "HTTP_AUTH_PASSWORD": PASSWORD,
                                    "OTPD_LOG_CODES": "true"})


def assert_401(r):
    assert_error(r, 401)
    assert r.headers.get("WWW-Authenticate", "").lower().startswith("basic"), r.headers


def header(user, password):
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_no_auth_is_401(o, method, path):
    assert_401(o.request(method, path, {}))


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("auth", [
    (USER, "wrong"), ("wrong", PASSWORD), (USER, ""), ("", PASSWORD), (USER, PASSWORD + "x"),
    (USER, PASSWORD[:-1]), (USER.upper(), PASSWORD), (USER + ":" + PASSWORD, ""),
])
def test_wrong_credentials_are_401(o, method, path, auth):
    assert_401(o.request(method, path, {}, headers=header(*auth)))


@pytest.mark.parametrize("value", ["Bearer abc", "Basic", "Basic !!!notbase64", "Digest x=1",
                                   "Basic " + base64.b64encode(b"nocolon").decode()])
def test_malformed_authorization_is_401(o, value):
    assert_401(o.request("GET", "/limit/sms", headers={"Authorization": value}))


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_health_checks_need_no_auth(o, path):
    assert_ok(o.get(path))
    assert_ok(o.get(path, auth=("x", "y")))


def test_right_credentials_work(o, uniq):
    phone, code = uniq.phone(), uniq.code()
    auth = (USER, PASSWORD)
    r = o.post("/sms", {"phone": phone, "password": code, "lifetime": 300, "message": "m"},
               auth=auth)
    assert_ok(r)
    assert_ok(o.get("/sms/check", {"phone": phone, "password": code}, auth=auth))
    assert_ok(o.get("/sms/check", {"phone": phone, "password": code},
                    headers=header(USER, PASSWORD)))
    assert_ok(o.post("/limit/call", {"phones": []}, auth=auth))
    assert assert_json(o.get("/limit/call", auth=auth), 200)["status"] is True
    r = o.get("/target", {"password": code, "channel": "sms"}, auth=auth)
    assert assert_json(r, 200)["content"] == {"target": phone}
    r = o.get("/password", {"target": phone}, auth=auth)
    assert_error(r, 403, status_code="disabled")
    r = o.post("/telegram/webhook", {"update_id": 1, "message": {
        "message_id": 1, "chat": {"id": 31337, "type": "private"}, "date": 0, "text": "hi"}},
        auth=auth)
    assert r.status_code == 200, r.text
    # errors behind auth keep their own status once authenticated
    assert_error(o.get("/sms", auth=auth), 405)
    assert_error(o.post("/sms", {}, auth=auth), 400)


def test_credentials_never_logged(o):
    o.get("/limit/sms", auth=(USER, PASSWORD))
    o.get("/limit/sms", auth=(USER, "wrong-Pw-7781"))
    text = o.log_text()
    assert PASSWORD not in text
    assert "wrong-Pw-7781" not in text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text


def test_webhook_with_secret_needs_no_basic_auth(otpd_factory):
    secret = "hook-secret-1"
    o = otpd_factory(env={"HTTP_AUTH_USERNAME": USER, "HTTP_AUTH_PASSWORD": PASSWORD,
                          "OTPD_TELEGRAM_WEBHOOK_SECRET": secret})
    upd = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 777001, "type": "private"},
                                       "date": 0, "text": "/start"}}
    r = o.post("/telegram/webhook", upd, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
    assert r.status_code == 200, r.text
    # the secret is what is checked there, not Basic auth
    r = o.post("/telegram/webhook", upd, auth=(USER, PASSWORD))
    assert_error(r, 401)
    # every other endpoint still needs Basic auth
    assert_401(o.get("/limit/sms"))
    assert_401(o.get("/sms/check", {"phone": "77011234567", "password": "1"},
                     headers={"X-Telegram-Bot-Api-Secret-Token": secret}))


def test_no_auth_configured_means_open(shared_otpd):
    r = requests.get(shared_otpd.url("/limit/sms"), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    r = requests.get(shared_otpd.url("/limit/sms"), timeout=HTTP_TIMEOUT, auth=("a", "b"))
    assert r.status_code == 200, r.text
