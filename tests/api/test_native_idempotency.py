"""Idempotency-Key on POST /otp/send, and the races the native dialect must win: one
verification and one delivery for concurrent sends under one key, exact attempt limits
under concurrent wrong verifies (one process on every backend, and two otpd processes on
one PostgreSQL schema), one approval for concurrent right verifies.

Deliveries are counted from the log provider's deliver lines (OTPD_LOG_CODES=true); a
duplicate would come within one poll of the delivery workers, so counts are taken again
after a short settle.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from otpdlib import (HTTP_TIMEOUT, NATIVE_ENV, App, assert_json, assert_native_error,
                     pg_settings, unique_phone)

SETTLE = 1.5   # seconds for a duplicate delivery to show up (workers poll every second)


@pytest.fixture(scope="module")
def o(native_otpd):
    return native_otpd


def plus_phone():
    return "+" + unique_phone()


def idem(key):
    return {"Idempotency-Key": key}


def new_key():
    return "idem-" + unique_phone()


def stored_lines(o, vid):
    return [r for r in o.log_records()
            if r.get("msg") == "code stored" and r.get("verification") == vid]


def assert_deliveries(o, phone, n):
    """Exactly n deliveries to phone, also after SETTLE seconds."""
    o.wait_deliveries(phone, n)
    time.sleep(SETTLE)
    got = o.deliveries(phone)
    assert len(got) == n, got
    return got


# ---- Idempotency-Key ---------------------------------------------------------------------------

def test_same_key_same_body_replays_the_first_answer(o):
    app = o.new_app()
    p, key = plus_phone(), new_key()
    body = {"recipient": p, "channel": "sms", "code_length": 8}
    first = app.post("/otp/send", body, headers=idem(key))
    a = assert_json(first, 200)
    assert "Idempotent-Replayed" not in first.headers
    again = app.post("/otp/send", body, headers=idem(key))
    b = assert_json(again, 200)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert b == a, (a, b)
    got = assert_deliveries(o, p[1:], 1)
    assert len(got[0]["code"]) == 8
    assert len(stored_lines(o, a["verification_id"])) == 1
    # the form of the key (X-API-Key or Bearer) does not matter: the app does
    third = app.request("POST", "/otp/send", body, auth="bearer", headers=idem(key))
    assert assert_json(third, 200) == a and third.headers.get("Idempotent-Replayed") == "true"


def test_replay_is_the_first_answer_after_the_verification_moved_on(o):
    app = o.new_app({"resend_cooldown": 0})
    p, key = plus_phone(), new_key()
    body = {"recipient": p, "fallback": ["call"]}
    a = assert_json(app.post("/otp/send", body, headers=idem(key)), 200)
    vid = a["verification_id"]
    code = o.code_of(vid)
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    assert app.verify_ok(vid, wrong)["attempts"] == 1
    assert assert_json(app.resend(vid), 200)["sends"] == 2
    r = app.post("/otp/send", body, headers=idem(key))
    assert r.headers.get("Idempotent-Replayed") == "true"
    assert assert_json(r, 200) == a
    assert app.verify_ok(vid, code)["verified"] is True
    r = app.post("/otp/send", body, headers=idem(key))
    assert assert_json(r, 200) == a
    assert_deliveries(o, p[1:], 2)   # the send and the resend, no replay


def test_same_key_same_parameters_in_another_spelling_replays(o):
    """The key is bound to what was asked: key order, white space and the place of a
    parameter (query or body) do not make another request."""
    app = o.new_app()
    p, key = plus_phone(), new_key()
    first = assert_json(app.post("/otp/send", {"recipient": p, "code_length": 8},
                                 headers=idem(key)), 200)
    spelled = '{ "code_length" : 8,\n  "recipient" : "%s" }' % p
    r = app.request("POST", "/otp/send", None, data=spelled.encode(),
                    headers={**idem(key), "Content-Type": "application/json"})
    assert r.headers.get("Idempotent-Replayed") == "true", r.text
    assert assert_json(r, 200) == first
    r = app.request("POST", "/otp/send", {"code_length": 8}, params={"recipient": p},
                    headers=idem(key))
    assert r.headers.get("Idempotent-Replayed") == "true", r.text
    assert assert_json(r, 200) == first
    assert_deliveries(o, p[1:], 1)


def test_same_key_other_body_is_409(o):
    app = o.new_app()
    p, key = plus_phone(), new_key()
    first = assert_json(app.post("/otp/send", {"recipient": p}, headers=idem(key)), 200)
    for other in ({"recipient": p, "channel": "call"}, {"recipient": plus_phone()},
                  {"recipient": p, "code_length": 4}):
        r = app.post("/otp/send", other, headers=idem(key))
        assert_native_error(r, 409, "idempotency_mismatch", "Idempotency-Key")
        assert "Idempotent-Replayed" not in r.headers
    # the first request still replays
    r = app.post("/otp/send", {"recipient": p}, headers=idem(key))
    assert assert_json(r, 200)["verification_id"] == first["verification_id"]
    assert_deliveries(o, p[1:], 1)


def test_keys_are_per_app(o):
    a, b = o.new_app(), o.new_app()
    p, key = plus_phone(), new_key()
    body = {"recipient": p}
    va = assert_json(a.post("/otp/send", body, headers=idem(key)), 200)
    rb = b.post("/otp/send", body, headers=idem(key))
    vb = assert_json(rb, 200)
    assert "Idempotent-Replayed" not in rb.headers
    assert vb["verification_id"] != va["verification_id"] and vb["appid"] == b.id
    assert_deliveries(o, p[1:], 2)


def test_without_a_key_every_send_is_new(o):
    app = o.new_app()
    p = plus_phone()
    ids = {app.send_ok(p)["verification_id"] for _ in range(2)}
    assert len(ids) == 2
    assert_deliveries(o, p[1:], 2)


def test_bad_idempotency_keys_are_refused(o):
    app = o.new_app()
    p = plus_phone()
    for key in ("", "k" * 256):
        r = app.post("/otp/send", {"recipient": p}, headers=idem(key))
        assert_native_error(r, 400, "invalid_parameter", "Idempotency-Key")
    r = app.post("/otp/send", {"recipient": p}, headers=idem("k" * 255))
    assert assert_json(r, 200)["status"] == "pending"
    assert_deliveries(o, p[1:], 1)


def test_a_refused_send_does_not_use_the_key(o):
    app = o.new_app()
    p, key = plus_phone(), new_key()
    r = app.post("/otp/send", {"recipient": p, "code_length": 2}, headers=idem(key))
    assert_native_error(r, 400, "invalid_parameter", "code_length")
    r = app.post("/otp/send", {"recipient": p}, headers=idem(key))
    assert "Idempotent-Replayed" not in r.headers
    assert assert_json(r, 200)["status"] == "pending"


# ---- races ------------------------------------------------------------------------------------

def race(n, fn):
    """Run fn(i) for i in range(n) from n threads released at once; the results in order."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait(timeout=HTTP_TIMEOUT)
        return fn(i)

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(go, range(n)))


def raw_post(base, path, app, body, headers=None):
    h = dict(app.auth_headers(), **(headers or {}))
    return requests.post(base + path, json=body, headers=h, timeout=HTTP_TIMEOUT)


def test_concurrent_sends_under_one_key_make_one_verification(o):
    app = o.new_app()
    p, key = plus_phone(), new_key()
    body = {"recipient": p, "channel": "sms"}
    rs = race(8, lambda i: raw_post(o.base, "/otp/send", app, body, idem(key)))
    bodies = [assert_json(r, 200) for r in rs]
    assert len({b["verification_id"] for b in bodies}) == 1, bodies
    fresh = [r for r in rs if r.headers.get("Idempotent-Replayed") != "true"]
    assert len(fresh) == 1, [dict(r.headers) for r in rs]
    assert all(b == bodies[0] for b in bodies)
    assert len(stored_lines(o, bodies[0]["verification_id"])) == 1
    assert_deliveries(o, p[1:], 1)


def test_concurrent_wrong_verifies_count_exactly(o):
    app = o.new_app()
    vid = app.send_ok(plus_phone(), max_wrong_attempts=5)["verification_id"]
    code = o.code_of(vid)
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    rs = race(16, lambda i: raw_post(o.base, "/otp/verify", app,
                                     {"verification_id": vid, "otp_code": wrong}))
    assert_attempts_exact([assert_json(r, 200) for r in rs], 5)
    st = app.status_ok(vid)
    assert st["status"] == "max_attempts_reached" and st["attempts"] == 5
    assert app.verify_ok(vid, code)["verified"] is False


def assert_attempts_exact(answers, limit):
    """Every wrong verify was counted once, up to the limit: the answers that counted saw
    the attempts 1..limit each exactly once; none went past the limit."""
    assert all(a["verified"] is False for a in answers)
    attempts = sorted(a["attempts"] for a in answers)
    assert attempts[-1] == limit, attempts
    for k in range(1, limit):
        assert attempts.count(k) == 1, attempts
    for a in answers:
        want = "pending" if a["attempts"] < limit else "max_attempts_reached"
        assert a["status"] == want, a


def test_concurrent_right_verifies_approve_once(o):
    app = o.new_app()
    vid = app.send_ok(plus_phone())["verification_id"]
    code = o.code_of(vid)
    rs = race(8, lambda i: raw_post(o.base, "/otp/verify", app,
                                    {"verification_id": vid, "otp_code": code}))
    answers = [assert_json(r, 200) for r in rs]
    assert sum(a["verified"] for a in answers) == 1, answers
    assert all(a["status"] == "approved" for a in answers)


# ---- two otpd processes on one PostgreSQL schema -------------------------------------------------

PG = pg_settings()


@pytest.fixture
def pg_pair(otpd_factory, backend):
    """Two otpd processes on one schema with one key (README "Several instances")."""
    if backend != "pg" or PG is None:
        pytest.skip("two processes share a PostgreSQL schema: pg only")
    from e2elib import secret_key
    env = dict(NATIVE_ENV, OTPD_SECRET_KEY=secret_key())
    a = otpd_factory(env=env, start=False)
    b = otpd_factory(env=env, start=False)
    b.env["PG_SCHEMA"] = a.schema
    a.start()
    b.start()
    yield a, b
    b.stop()   # b must not outlive a's schema


def code_of_pair(pair, vid):
    """The code of a verification sent through pair[0], delivered by either process."""
    a = pair[0]
    job = a.wait_log(lambda r: r.get("msg") == "code stored"
                     and r.get("verification") == vid)["job"]
    deadline = time.monotonic() + 30
    while True:
        for o in pair:
            for r in o.deliveries():
                if r.get("job") == job:
                    return r["code"]
        assert time.monotonic() < deadline, f"job {job} never delivered"
        time.sleep(0.05)


def test_two_processes_count_wrong_verifies_exactly(pg_pair):
    a, b = pg_pair
    app = a.new_app()
    on_b = App(b, app.app, app.key)
    vid = app.send_ok(plus_phone(), max_wrong_attempts=6)["verification_id"]
    code = code_of_pair(pg_pair, vid)
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    # b learns of the app and the key from the shared schema
    assert on_b.status_ok(vid)["attempts"] == 0
    rs = race(20, lambda i: raw_post((a, b)[i % 2].base, "/otp/verify", app,
                                     {"verification_id": vid, "otp_code": wrong}))
    assert_attempts_exact([assert_json(r, 200) for r in rs], 6)
    for side in (app, on_b):
        st = side.status_ok(vid)
        assert st["status"] == "max_attempts_reached" and st["attempts"] == 6
    assert on_b.verify_ok(vid, code)["verified"] is False


def test_two_processes_replay_one_idempotent_send(pg_pair):
    a, b = pg_pair
    app = a.new_app()
    p, key = plus_phone(), new_key()
    body = {"recipient": p}
    rs = race(8, lambda i: raw_post((a, b)[i % 2].base, "/otp/send", app, body, idem(key)))
    bodies = [assert_json(r, 200) for r in rs]
    assert len({x["verification_id"] for x in bodies}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in rs) == 1
    # delivered once, by one of the two
    deadline = time.monotonic() + 30
    while len(a.deliveries(p[1:])) + len(b.deliveries(p[1:])) < 1:
        assert time.monotonic() < deadline, "never delivered"
        time.sleep(0.05)
    time.sleep(SETTLE)
    assert len(a.deliveries(p[1:])) + len(b.deliveries(p[1:])) == 1


def test_concurrent_resends_stay_within_max_sends(o):
    app = o.new_app({"resend_cooldown": 0, "max_sends": 3})
    p = plus_phone()
    vid = app.send_ok(p)["verification_id"]
    code = o.code_of(vid)
    rs = race(8, lambda i: raw_post(o.base, "/otp/resend", app, {"verification_id": vid}))
    ok = [assert_json(r, 200) for r in rs if r.status_code == 200]
    refused = [r for r in rs if r.status_code != 200]
    # each send that was answered 200 was counted once: no two saw the same count, and
    # none went past max_sends (a loser of the race is told to read it again)
    sends = sorted(v["sends"] for v in ok)
    assert sends == list(range(2, 2 + len(ok))) and 1 <= len(ok) <= 2, [r.text for r in rs]
    for r in refused:
        body = r.json()
        assert (r.status_code, body["error"]) in ((429, "max_sends_reached"),
                                                  (409, "conflict")), r.text
    assert app.status_ok(vid)["sends"] == 1 + len(ok)
    got = assert_deliveries(o, p[1:], 1 + len(ok))
    assert {d["code"] for d in got} == {code}
