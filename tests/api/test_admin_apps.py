"""Apps and API keys over HTTP (/admin/apps, /admin/keys), who may call the native
dialect (an app's key in its three forms, an admin key, OTPD_ADMIN_TOKEN; wrong and
revoked keys), and app isolation - on every backend.

One otpd per module (native_otpd, started with OTPD_ADMIN_TOKEN and OTPD_LOG_CODES); each
test makes its own apps and keys.
"""

import base64
import re

import pytest

from otpdlib import (ADMIN_TOKEN, NATIVE_ENV, assert_json, assert_native_error, run_otpd,
                     unique_phone)

APP_KEYS = ["id", "name", "settings", "created_at", "updated_at"]
KEY_KEYS = ["id", "app_id", "admin", "name", "format", "created_at", "revoked_at"]
DEFAULTS = {
    "code_length": 6, "allow_digits": True, "allow_upper_case": False,
    "allow_lower_case": False, "allow_special_chars": False, "exclude_lookalikes": False,
    "validity_period": 300, "max_wrong_attempts": 5, "max_sends": 5, "resend_cooldown": 30,
    "consume_on_approval": True, "channels": ["sms", "email", "call", "telegram", "whatsapp"],
    "sender": None, "allow_custom_code": False, "templates": {},
}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def o(native_otpd):
    return native_otpd


def plus_phone():
    return "+" + unique_phone()


def bearer(token):
    return {"Authorization": "Bearer " + token}


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ---- /admin/apps ---------------------------------------------------------------------------

def test_create_app_with_defaults(o):
    r = o.admin("POST", "/admin/apps", {"name": "Shop"})
    app = assert_json(r, 201)
    assert list(app) == APP_KEYS
    assert re.fullmatch(r"app_[0-9a-f]{32}", app["id"])
    assert app["name"] == "Shop" and app["settings"] == DEFAULTS
    assert ISO.fullmatch(app["created_at"]) and app["updated_at"] == app["created_at"]
    got = assert_json(o.admin("GET", f"/admin/apps/{app['id']}"), 200)
    assert got == app


def test_create_app_with_settings(o):
    settings = {"code_length": 8, "allow_upper_case": True, "exclude_lookalikes": True,
                "validity_period": 600, "max_wrong_attempts": 3, "max_sends": 2,
                "resend_cooldown": 0, "consume_on_approval": False, "channels": ["email", "sms"],
                "sender": "Acme", "allow_custom_code": True,
                "templates": {"login": {"en": "Code {code}", "pt-BR": "Codigo {code}"}}}
    app = o.create_app(settings)
    want = dict(DEFAULTS, **settings)
    want["channels"] = ["sms", "email"]   # the canonical order
    assert app["settings"] == want


@pytest.mark.parametrize("body,error,field", [
    ({}, "missing_parameter", "name"),
    ({"name": ""}, "missing_parameter", "name"),
    ({"name": 5}, "invalid_parameter", "name"),
    ({"name": "x" * 200}, "invalid_parameter", "name"),
    ({"name": "a", "settings": []}, "invalid_parameter", "settings"),
    ({"name": "a", "settings": "x"}, "invalid_parameter", "settings"),
    ({"name": "a", "settings": {"code_length": 3}}, "invalid_parameter",
     "settings.code_length"),
    ({"name": "a", "settings": {"code_length": 33}}, "invalid_parameter",
     "settings.code_length"),
    ({"name": "a", "settings": {"code_length": "6"}}, "invalid_parameter",
     "settings.code_length"),
    ({"name": "a", "settings": {"allow_digits": "yes"}}, "invalid_parameter",
     "settings.allow_digits"),
    ({"name": "a", "settings": {"validity_period": 0}}, "invalid_parameter",
     "settings.validity_period"),
    ({"name": "a", "settings": {"max_wrong_attempts": -1}}, "invalid_parameter",
     "settings.max_wrong_attempts"),
    ({"name": "a", "settings": {"max_sends": 0}}, "invalid_parameter", "settings.max_sends"),
    ({"name": "a", "settings": {"resend_cooldown": -1}}, "invalid_parameter",
     "settings.resend_cooldown"),
    ({"name": "a", "settings": {"channels": []}}, "invalid_parameter", "settings.channels"),
    ({"name": "a", "settings": {"channels": ["fax"]}}, "invalid_parameter",
     "settings.channels"),
    ({"name": "a", "settings": {"sender": "x" * 32}}, "invalid_parameter", "settings.sender"),
    ({"name": "a", "settings": {"templates": {"t": {"en": "no code"}}}}, "invalid_parameter",
     "settings.templates"),
    ({"name": "a", "settings": {"templates": {"t": "Code {code}"}}}, "invalid_parameter",
     "settings.templates"),
    ({"name": "a", "settings": {"colour": "blue"}}, "invalid_parameter", "settings.colour"),
    ({"name": "a", "settings": {"allow_digits": False}}, "invalid_parameter", "settings"),
])
def test_create_app_refuses_bad_fields(o, body, error, field):
    r = o.admin("POST", "/admin/apps", body)
    assert_native_error(r, 400, error, field)


def test_list_apps_with_cursor(o):
    made = {o.create_app(name=f"list-{i}")["id"] for i in range(5)}
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = assert_json(o.admin("GET", "/admin/apps", params=params), 200)
        assert set(page) == {"data", "next_cursor"}
        assert len(page["data"]) <= 2
        for a in page["data"]:
            assert list(a) == APP_KEYS
        seen += [a["id"] for a in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["data"][-1]["id"]
        assert pages < 100
    assert len(seen) == len(set(seen)), "a page repeated an app"
    assert made <= set(seen)
    everything = assert_json(o.admin("GET", "/admin/apps"), 200)
    assert [a["id"] for a in everything["data"]] == seen[:len(everything["data"])]
    assert_native_error(o.admin("GET", "/admin/apps", params={"limit": 0}), 400,
                        "invalid_parameter", "limit")
    assert_native_error(o.admin("GET", "/admin/apps", params={"limit": "x"}), 400,
                        "invalid_parameter", "limit")


def test_patch_merges_put_replaces(o):
    app = o.create_app({"code_length": 8, "max_sends": 2}, name="before")
    r = o.admin("PATCH", f"/admin/apps/{app['id']}", {"settings": {"resend_cooldown": 5}})
    got = assert_json(r, 200)
    assert got["name"] == "before"
    assert got["settings"] == dict(DEFAULTS, code_length=8, max_sends=2, resend_cooldown=5)
    r = o.admin("PATCH", f"/admin/apps/{app['id']}", {"name": "after"})
    got = assert_json(r, 200)
    assert got["name"] == "after" and got["settings"]["code_length"] == 8
    r = o.admin("PUT", f"/admin/apps/{app['id']}", {"name": "put", "settings": {"max_sends": 9}})
    got = assert_json(r, 200)
    assert got["name"] == "put" and got["settings"] == dict(DEFAULTS, max_sends=9)
    assert got["created_at"] == app["created_at"]
    assert assert_json(o.admin("GET", f"/admin/apps/{app['id']}"), 200) == got
    # PUT needs the whole app
    assert_native_error(o.admin("PUT", f"/admin/apps/{app['id']}", {"settings": {}}), 400,
                        "missing_parameter", "name")
    # a bad setting changes nothing
    r = o.admin("PATCH", f"/admin/apps/{app['id']}", {"settings": {"max_sends": 0}})
    assert_native_error(r, 400, "invalid_parameter", "settings.max_sends")
    assert assert_json(o.admin("GET", f"/admin/apps/{app['id']}"), 200) == got


def test_unknown_app_is_404(o):
    missing = "/admin/apps/app_" + "0" * 32
    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("PUT", {"name": "x"}),
                         ("DELETE", None)):
        assert_native_error(o.admin(method, missing, body), 404, "not_found", "id")


def test_delete_app(o):
    app = o.new_app()
    vid = app.send_ok(plus_phone())["verification_id"]
    r = o.admin("DELETE", f"/admin/apps/{app.id}")
    assert r.status_code == 204 and r.content == b""
    assert_native_error(o.admin("GET", f"/admin/apps/{app.id}"), 404, "not_found", "id")
    assert_native_error(o.admin("DELETE", f"/admin/apps/{app.id}"), 404, "not_found", "id")
    assert app.id not in [a["id"] for a in assert_json(o.admin("GET", "/admin/apps"),
                                                       200)["data"]]
    # its keys are gone with it
    keys = assert_json(o.admin("GET", "/admin/keys", params={"app_id": app.id}), 200)
    assert keys["data"] == []
    # and its key, known a moment ago, is refused at once
    assert_native_error(app.send(plus_phone()), 401, "unauthorized")
    assert_native_error(app.status(vid), 401, "unauthorized")


def test_wrong_methods_on_admin_paths(o):
    r = o.admin("POST", "/admin/apps/app_x")
    assert_native_error(r, 405, "method_not_allowed", False)
    assert r.headers["Allow"] == "GET, PUT, PATCH, DELETE"
    r = o.admin("PUT", "/admin/keys")
    assert r.headers["Allow"] == "GET, POST"
    r = o.admin("GET", "/admin/keys/key_x")
    assert r.status_code == 405 and r.headers["Allow"] == "DELETE"


def test_admin_body_must_be_json(o):
    r = o.admin("POST", "/admin/apps", None, data="name=x",
                headers={"Authorization": "Bearer " + ADMIN_TOKEN,
                         "Content-Type": "application/x-www-form-urlencoded"})
    assert_native_error(r, 400, "invalid_json", "Content-Type")
    r = o.admin("POST", "/admin/apps", None, data='{"name":',
                headers={"Authorization": "Bearer " + ADMIN_TOKEN,
                         "Content-Type": "application/json"})
    assert_native_error(r, 400, "invalid_json")


# ---- /admin/keys ---------------------------------------------------------------------------

def test_create_list_revoke_keys(o):
    app = o.create_app()
    r = o.admin("POST", "/admin/keys", {"app_id": app["id"], "name": "backend"})
    key = assert_json(r, 201)
    assert list(key) == KEY_KEYS + ["secret", "token"]
    assert re.fullmatch(r"key_[0-9a-f]{32}", key["id"])
    assert key["app_id"] == app["id"] and key["admin"] is False and key["name"] == "backend"
    assert key["format"] == "plain" and key["revoked_at"] is None
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key["secret"])
    assert key["token"] == f"{key['id']}.{key['secret']}"
    second = o.create_key(app["id"], name="other")
    listed = assert_json(o.admin("GET", "/admin/keys", params={"app_id": app["id"]}), 200)
    assert set(listed) == {"data"}
    by_id = {k["id"]: k for k in listed["data"]}
    assert set(by_id) == {key["id"], second["id"]}
    for k in listed["data"]:
        assert list(k) == KEY_KEYS   # the secret is shown once, never listed
    assert key["secret"] not in assert_json(o.admin("GET", "/admin/keys"), 200).__repr__()
    # all keys, without a filter
    everything = assert_json(o.admin("GET", "/admin/keys"), 200)
    assert {key["id"], second["id"]} <= {k["id"] for k in everything["data"]}
    # revoke
    r = o.admin("DELETE", f"/admin/keys/{key['id']}")
    revoked = assert_json(r, 200)
    assert revoked["id"] == key["id"] and ISO.fullmatch(revoked["revoked_at"])
    assert list(revoked) == KEY_KEYS
    listed = assert_json(o.admin("GET", "/admin/keys", params={"app_id": app["id"]}), 200)
    assert {k["id"]: k["revoked_at"] for k in listed["data"]}[key["id"]] == revoked["revoked_at"]
    assert_native_error(o.admin("DELETE", "/admin/keys/key_" + "0" * 32), 404, "not_found",
                        "id")


def test_admin_keys(o):
    r = o.admin("POST", "/admin/keys", {"admin": True, "name": "ops"})
    key = assert_json(r, 201)
    assert key["admin"] is True and key["app_id"] is None
    # an admin key may use /admin
    r = o.admin("GET", "/admin/apps", token=key["token"])
    assert assert_json(r, 200)["data"] is not None


@pytest.mark.parametrize("body,status,error,field", [
    ({"name": "k"}, 400, "missing_parameter", "app_id"),
    ({"app_id": "app_" + "0" * 32}, 404, "not_found", "app_id"),
    ({"admin": True, "app_id": "APP"}, 400, "invalid_parameter", "app_id"),
    ({"admin": "yes"}, 400, "invalid_parameter", "admin"),
    ({"admin": True, "format": "jwt"}, 400, "invalid_parameter", "format"),
    ({"admin": True, "name": "x" * 200}, 400, "invalid_parameter", "name"),
])
def test_create_key_refuses_bad_fields(o, body, status, error, field):
    if body.get("app_id") == "APP":
        body = dict(body, app_id=o.create_app()["id"])
    assert_native_error(o.admin("POST", "/admin/keys", body), status, error, field)


# ---- who may call /admin ----------------------------------------------------------------------

ADMIN_ROUTES = [("GET", "/admin/apps"), ("POST", "/admin/apps"), ("GET", "/admin/apps/app_x"),
                ("PATCH", "/admin/apps/app_x"), ("PUT", "/admin/apps/app_x"),
                ("DELETE", "/admin/apps/app_x"), ("GET", "/admin/keys"),
                ("POST", "/admin/keys"), ("DELETE", "/admin/keys/key_x")]


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_needs_an_admin_credential(o, method, path):
    app = o.new_app()
    for headers in ({}, bearer("x" * 40), bearer(ADMIN_TOKEN + "x"), bearer(ADMIN_TOKEN[:-1]),
                    basic("admin", ADMIN_TOKEN), {"X-API-Key": "key_x", "X-API-Secret": "s"}):
        r = o.request(method, path, {"name": "n"}, headers=headers)
        assert_native_error(r, 401, "unauthorized", False)
        assert r.headers.get("WWW-Authenticate") == 'Bearer realm="otpd"', r.headers
    # an app's key is known, but not enough here
    for auth in ("x-api", "basic", "bearer"):
        r = app.request(method, path, {"name": "n"}, auth=auth)
        assert_native_error(r, 403, "forbidden")
        assert "WWW-Authenticate" not in r.headers


def test_admin_token_needs_32_characters():
    cp = run_otpd(["--check-config"], {"OTPD_ADMIN_TOKEN": "short-token"})
    assert cp.returncode == 2 and "OTPD_ADMIN_TOKEN" in cp.stderr, cp.stderr
    cp = run_otpd(["--check-config"], {"OTPD_ADMIN_TOKEN": "t" * 32})
    assert cp.returncode == 0, cp.stderr
    assert "t" * 32 not in cp.stdout + cp.stderr


def test_without_admin_token_admin_needs_an_admin_key(otpd_factory):
    o = otpd_factory()
    r = o.request("GET", "/admin/apps", headers=bearer(ADMIN_TOKEN))
    assert_native_error(r, 401, "unauthorized")
    r = o.request("GET", "/admin/apps")
    assert_native_error(r, 401, "unauthorized")


# ---- API keys on the native dialect ---------------------------------------------------------

@pytest.mark.parametrize("auth", ["x-api", "basic", "bearer"])
def test_each_key_form_works(o, auth):
    app = o.new_app()
    r = app.request("POST", "/otp/send", {"recipient": plus_phone()}, auth=auth)
    body = assert_json(r, 200)
    assert body["appid"] == app.id
    vid = body["verification_id"]
    code = o.code_of(vid)
    r = app.request("GET", "/otp/status", None, auth=auth, params={"verification_id": vid})
    assert assert_json(r, 200)["status"] == "pending"
    r = app.request("POST", "/otp/verify", {"verification_id": vid, "otp_code": code},
                    auth=auth)
    assert assert_json(r, 200)["verified"] is True


def test_bearer_base64_of_key_and_secret(o):
    app = o.new_app()
    raw = base64.b64encode(f"{app.key_id}:{app.secret}".encode()).decode()
    r = o.post("/otp/send", {"recipient": plus_phone()}, headers=bearer(raw))
    assert assert_json(r, 200)["appid"] == app.id


NATIVE_ROUTES = [("POST", "/otp/send"), ("POST", "/otp/verify"), ("POST", "/otp/resend"),
                 ("POST", "/otp/cancel"), ("GET", "/otp/status")]


@pytest.mark.parametrize("method,path", NATIVE_ROUTES)
def test_wrong_or_missing_keys_are_401(o, method, path):
    app = o.new_app()
    other = o.new_app()
    bad = [
        {},
        {"X-API-Key": app.key_id},                                   # no secret
        {"X-API-Secret": app.secret},                                # no key
        {"X-API-Key": app.key_id, "X-API-Secret": app.secret + "x"},
        {"X-API-Key": app.key_id, "X-API-Secret": other.secret},     # another key's secret
        {"X-API-Key": "key_" + "0" * 32, "X-API-Secret": app.secret},
        basic(app.key_id, "wrong"),
        basic(app.key_id, ""),
        bearer(app.key_id + ".wrong"),
        bearer(app.token + "x"),
        bearer(app.secret),
        bearer(""),
        {"Authorization": "Digest " + app.token},
        bearer("x" * 40),                                            # not the admin token
    ]
    for headers in bad:
        r = o.request(method, path, {"recipient": plus_phone()}, headers=headers)
        assert_native_error(r, 401, "unauthorized", False)
        assert r.headers.get("WWW-Authenticate") == 'Bearer realm="otpd"', r.headers
        assert app.secret not in r.text
    assert app.secret not in o.log_text()


def test_revoked_key_is_401_at_once(o):
    app = o.new_app()
    vid = app.send_ok(plus_phone())["verification_id"]
    spare = o.create_key(app.id, name="spare")
    assert_json(o.admin("DELETE", f"/admin/keys/{app.key_id}"), 200)
    for auth in ("x-api", "basic", "bearer"):
        assert_native_error(app.request("GET", "/otp/status", None, auth=auth,
                                        params={"verification_id": vid}),
                            401, "unauthorized")
    # another key of the app still works and sees the app's verification
    r = o.get("/otp/status", params={"verification_id": vid},
              headers={"X-API-Key": spare["id"], "X-API-Secret": spare["secret"]})
    assert assert_json(r, 200)["verification_id"] == vid


def test_admin_key_acts_for_every_app(o):
    app = o.new_app()
    key = o.create_key(admin=True)
    hdr = {"X-API-Key": key["id"], "X-API-Secret": key["secret"]}
    p = plus_phone()
    assert_native_error(o.post("/otp/send", {"recipient": p}, headers=hdr), 400,
                        "missing_parameter", "appid")
    body = assert_json(o.post("/otp/send", {"recipient": p, "appid": app.id}, headers=hdr), 200)
    assert body["appid"] == app.id
    vid = body["verification_id"]
    st = assert_json(o.get("/otp/status", params={"verification_id": vid}, headers=hdr), 200)
    assert st["appid"] == app.id
    # naming another app than the verification's finds nothing
    other = o.new_app()
    r = o.get("/otp/status", params={"verification_id": vid, "appid": other.id}, headers=hdr)
    assert_native_error(r, 404, "not_found", "verification_id")
    c = assert_json(o.post("/otp/cancel", {"verification_id": vid}, headers=hdr), 200)
    assert c["status"] == "canceled"


# ---- app isolation ---------------------------------------------------------------------------

def test_another_apps_key_sees_nothing(o):
    a = o.new_app({"resend_cooldown": 0})
    b = o.new_app({"resend_cooldown": 0})
    p = plus_phone()
    vid = a.send_ok(p)["verification_id"]
    code = o.code_of(vid)
    assert_native_error(b.status(vid), 404, "not_found", "verification_id")
    assert_native_error(b.verify(vid, code), 404, "not_found", "verification_id")
    assert_native_error(b.resend(vid), 404, "not_found", "verification_id")
    assert_native_error(b.cancel(vid), 404, "not_found", "verification_id")
    # by recipient: b has nothing pending for it, and a's code is not counted
    assert_native_error(b.verify(None, code, recipient=p), 404, "not_found", "recipient")
    assert_native_error(b.verify(None, "000000", recipient=p), 404, "not_found", "recipient")
    st = a.status_ok(vid)
    assert st["status"] == "pending" and st["attempts"] == 0 and st["sends"] == 1
    assert len(o.deliveries(p[1:])) == 1
    # and the owner still verifies it
    assert a.verify_ok(vid, code)["verified"] is True


def test_a_key_naming_another_app_is_403(o):
    a, b = o.new_app(), o.new_app()
    p = plus_phone()
    vid = a.send_ok(p)["verification_id"]
    r = b.send(p, appid=a.id)
    assert_native_error(r, 403, "forbidden", "appid")
    assert_native_error(b.post("/otp/verify", {"verification_id": vid, "otp_code": "1",
                                               "appid": a.id}), 403, "forbidden", "appid")
    assert_native_error(b.get("/otp/status", {"verification_id": vid, "appid": a.id}), 403,
                        "forbidden", "appid")
    assert_native_error(b.post("/otp/resend", {"verification_id": vid, "appid": a.id}), 403,
                        "forbidden", "appid")
    assert_native_error(b.post("/otp/cancel", {"verification_id": vid, "appid": a.id}), 403,
                        "forbidden", "appid")
    # naming its own app is fine
    body = assert_json(b.send(plus_phone(), appid=b.id), 200)
    assert body["appid"] == b.id
    assert a.status_ok(vid)["status"] == "pending"
    assert len(o.deliveries(p[1:])) == 1


def test_compat_basic_auth_does_not_guard_the_native_routes(otpd_factory):
    """With HTTP_AUTH_* set, compat routes need Basic; native and admin routes need their
    own credentials, and the compat Basic credentials are not one of them."""
    o = otpd_factory(env=dict(NATIVE_ENV, HTTP_AUTH_USERNAME="ops", HTTP_AUTH_PASSWORD="pw"))
    app = o.new_app()
    vid = assert_json(app.send(plus_phone()), 200)["verification_id"]
    assert app.status_ok(vid)["status"] == "pending"
    r = o.request("POST", "/otp/send", {"recipient": plus_phone()}, headers=basic("ops", "pw"))
    assert_native_error(r, 401, "unauthorized")
    r = o.request("GET", "/admin/apps", headers=basic("ops", "pw"))
    assert_native_error(r, 401, "unauthorized")
    # and the compat side is guarded as before
    assert o.request("POST", "/sms", {"phone": unique_phone(), "password": "1234",
                                      "lifetime": 60, "message": "1234"}).status_code == 401
    r = o.request("POST", "/sms", {"phone": unique_phone(), "password": "1234", "lifetime": 60,
                                   "message": "1234"}, headers=basic("ops", "pw"))
    assert r.status_code == 200, r.text
