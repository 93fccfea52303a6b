"""Delivery end to end: the transactional outbox and every provider, against local fakes.

otpd runs as a real process (otpd_factory, see conftest.py); the providers it talks to are
tests/fakes/fakes.py servers on 127.0.0.1 started by each test, sometimes late (a service
that is down) or scripted to fail, hold or quirk. What is checked is what crosses the
network: the exact requests, how many, and what GET /admin/outbox reports; plus that no
code ever reaches a log line or, in clear, a file of the data directory.

Backend-dependent behaviour (claims, leases, retries, restarts, erasure) runs on every
backend of the `backend` fixture; the request formats of the providers only on sqlite.
"""

import base64
import email
import email.policy
import hashlib
import hmac
import json
import re
import sqlite3
import subprocess
import time
from urllib.parse import parse_qsl

import pytest

from e2elib import (DELIVERY_TIMEOUT, all_in_state, assert_code_not_logged, fakes,
                    only_job, ordered, outbox, pg_bin, quiet, reserve_port, wait_jobs)
from otpdlib import ADMIN_TOKEN, assert_ok, base_env, pg_sql, run_otpd, unique_chat_id, \
    unique_code, unique_email, unique_phone

FakeHTTP = fakes.FakeHTTP
FakeSMTP = fakes.FakeSMTP

# Retries within about a second (next_at has whole-second resolution).
FAST = {"OTPD_OUTBOX_BACKOFF_BASE_MS": 100, "OTPD_OUTBOX_BACKOFF_MAX": 1}

# The seed's request examples (000, "API Reference"), unchanged.
SEED = {
    "sms": {"ip": "123.123.123.123", "phone": "77011234567", "password": "12345",
            "lifetime": 300, "message": "Your OTP is 12345"},
    "call": {"ip": "123.123.123.123", "phone": "77011234567", "password": "12345",
             "lifetime": 300},
    "email": {"ip": "123.123.123.123", "email": "foobar@example.com", "password": "12345",
              "lifetime": 300, "subject": "Hello", "text": "Your OTP is 12345"},
    "telegram": {"ip": "123.123.123.123", "chat_id": "1234567890", "password": "12345",
                 "lifetime": 300, "message": "Your OTP is 12345"},
}


# ---- expected Queue tasks (COMPAT.md, "Delivery as the old service did it") ------------

def sms_task(phone, message, url="http://sms", worker="sms"):
    return {"url": url + "/sms", "method": "post", "worker": worker,
            "json": {"phones": phone, "message": message, "type": "sms", "force": True}}


def call_task(phone, code, url="http://sms", worker="sms"):
    return {"url": url + "/sms", "method": "post", "worker": worker,
            "json": {"phones": phone, "message": " ".join(code), "type": "call",
                     "force": True}}


def email_task(to, subject, text, html, url="http://email", worker="email"):
    return {"url": url + "/smtp", "method": "post", "worker": worker,
            "json": {"to": to, "subject": subject, "text": text, "html": html,
                     "force": True}}


def telegram_task(chat_id, message, token, url="http://telegram:8080", worker="telegram"):
    return {"url": url + "/msg", "method": "post", "worker": worker,
            "headers": {"X-Auth-Token": token},
            "json": {"to": int(chat_id), "message": message}}


# ---- helpers ---------------------------------------------------------------------------

def sqlite_only(backend):
    if backend != "sqlite":
        pytest.skip("request format of a provider: backend-independent, run on sqlite")


def start_otpd(factory, env, provider="queue"):
    """otpd with `env`; provider "queue" means OTPD_PROVIDER unset (the default), any other
    value is set as OTPD_PROVIDER; None keeps the harness's OTPD_PROVIDER=log."""
    o = factory(env=env, start=False)
    if provider == "queue":
        o.env.pop("OTPD_PROVIDER", None)
    elif provider is not None:
        o.env["OTPD_PROVIDER"] = provider
    return o.start()


def assert_task(req, expected, path="/task"):
    """One request to the Queue: POST path, JSON, body equal to `expected` with the same
    key order at every level."""
    assert req["method"] == "POST", req
    assert req["path"] == path, req["path"]
    assert req["header_map"].get("content-type", "").split(";")[0] == "application/json"
    body = json.loads(req["body"])
    assert body == expected, f"\n got  {req['body_text']}\n want {json.dumps(expected)}"
    assert ordered(req["body"]) == ordered(expected), (
        f"key order differs:\n got  {req['body_text']}\n want {json.dumps(expected)}")


def job_sent(attempts=None):
    def pred(c):
        jobs = c["jobs"]
        return len(jobs) == 1 and jobs[0]["state"] == "sent" and (
            attempts is None or jobs[0]["attempts"] == attempts)
    return pred


def data_files(o):
    """Every file of the data directory but the key file: (name, bytes)."""
    out = []
    for p in sorted(o.data_dir.iterdir()):
        if p.is_file() and p.name != "secret.key":
            out.append((p.name, p.read_bytes()))
    return out


def pg_dump_schema(o):
    """The data of o's PostgreSQL schema as pg_dump writes it (bytea as hex)."""
    dump = pg_bin("pg_dump")
    if dump is None:
        pytest.skip("pg_dump not installed")
    env = base_env()
    if o.pg.get("password"):
        env["PGPASSWORD"] = o.pg["password"]
    cp = subprocess.run([dump, "-a", "-h", o.pg["host"], "-p", str(o.pg["port"]), "-U",
                         o.pg["user"], "-n", o.schema, o.pg["database"]],
                        env=env, capture_output=True, timeout=120, check=True)
    return cp.stdout


def assert_not_at_rest(o, *secrets_):
    """None of the strings is in clear in the store: on sqlite the raw bytes of every file
    of the data directory (secret.key excepted: it is the key); on PostgreSQL the data of
    the schema (as text, and bytea values as hex)."""
    for s in secrets_:
        raw = s.encode()
        if o.backend == "sqlite":
            files = data_files(o)
            assert any(name == "otpd.db" for name, _ in files), [n for n, _ in files]
            for name, data in files:
                assert raw not in data, f"{s!r} found in clear in {o.data_dir / name}"
        else:
            dump = pg_dump_schema(o)
            assert raw not in dump, f"{s!r} found in clear in schema {o.schema}"
            assert raw.hex().encode() not in dump, f"{s!r} found (bytea hex) in {o.schema}"


def stored_payloads(o):
    """How many outbox rows still hold a payload (reads the store directly)."""
    if o.backend == "sqlite":
        con = sqlite3.connect(f"file:{o.data_dir / 'otpd.db'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM outbox WHERE payload IS NOT NULL"
                               ).fetchone()[0]
        finally:
            con.close()
    cp = pg_sql(o.pg, f'SELECT count(*) FROM "{o.schema}".otpd_outbox '
                      "WHERE payload IS NOT NULL")
    if cp is None:
        pytest.skip("psql not installed")
    # -q keeps the rows: " count \n-------\n     0\n(1 row)"
    return int(re.search(r"^\s*(\d+)\s*$", cp.stdout, re.M).group(1))


# ---- the queue provider: the old service's bodies -------------------------------------

def test_queue_bodies_with_defaults(otpd_factory):
    """The seed's four example sends reach the Queue as exactly the old service's tasks,
    with the default OTP_* URLs and workers."""
    with FakeHTTP() as q:
        o = start_otpd(otpd_factory, {"OTP_QUEUE_URL": q.url, "OTP_TELEGRAM_APP_TOKEN": "tg-app"})
        want = [
            sms_task("77011234567", "Your OTP is 12345"),
            call_task("77011234567", "12345"),
            email_task("foobar@example.com", "Hello", "Your OTP is 12345", None),
            telegram_task("1234567890", "Your OTP is 12345", "tg-app"),
        ]
        for i, ch in enumerate(["sms", "call", "email", "telegram"]):
            assert_ok(o.post("/" + ch, SEED[ch]))
            got = q.wait_for(i + 1, DELIVERY_TIMEOUT)
            assert_task(got[i], want[i])
        quiet(q, 4)
        c = wait_jobs(o, all_in_state(4), what="4 jobs sent")
        assert c["counts"] == {"pending": 0, "sending": 0, "sent": 4, "dead": 0, "skipped": 0}
        assert all(j["provider"] == "queue" and j["attempts"] == 1 for j in c["jobs"])
        assert o.check("sms", "77011234567", "12345") is True
        assert o.check("email", "foobar@example.com", "12345") is True
        assert o.check("telegram", "1234567890", "12345") is True


def test_queue_bodies_with_overrides(otpd_factory, backend):
    """OTP_QUEUE_URL (with a path), every OTP_*_URL and OTP_*_WORKER override, email with
    html only and with text and html, a group chat id (negative)."""
    sqlite_only(backend)
    env = {
        "OTP_SMS_URL": "http://sms.example:81/gw", "OTP_SMS_WORKER": "w-sms",
        "OTP_CALL_URL": "http://voice.example", "OTP_CALL_WORKER": "w-call",
        "OTP_EMAIL_URL": "https://mail.example/api", "OTP_EMAIL_WORKER": "w-mail",
        "OTP_TELEGRAM_URL": "http://tg.example:9090", "OTP_TELEGRAM_WORKER": "w-tg",
        "OTP_TELEGRAM_APP_TOKEN": "app-token-7",
    }
    with FakeHTTP() as q:
        env["OTP_QUEUE_URL"] = q.url + "/queue/v1"
        o = start_otpd(otpd_factory, env)
        phone, mail, chat = unique_phone(), unique_email(), "-100" + unique_chat_id()
        codes = [unique_code(7) for _ in range(5)]
        sends = [
            ("/sms", {"phone": "+" + phone, "password": codes[0], "lifetime": 60,
                      "message": f"Code: {codes[0]}"},
             sms_task(phone, f"Code: {codes[0]}", "http://sms.example:81/gw", "w-sms")),
            ("/call", {"phone": phone, "password": codes[1], "lifetime": 60},
             call_task(phone, codes[1], "http://voice.example", "w-call")),
            ("/email", {"email": mail, "password": codes[2], "lifetime": 60,
                        "subject": "S", "html": f"<b>{codes[2]}</b>"},
             email_task(mail, "S", None, f"<b>{codes[2]}</b>", "https://mail.example/api",
                        "w-mail")),
            ("/email", {"email": mail, "password": codes[3], "lifetime": 60,
                        "subject": "S2", "text": f"t {codes[3]}", "html": f"<i>{codes[3]}</i>"},
             email_task(mail, "S2", f"t {codes[3]}", f"<i>{codes[3]}</i>",
                        "https://mail.example/api", "w-mail")),
            ("/telegram", {"chat_id": int(chat), "password": codes[4], "lifetime": 60,
                           "message": f"tg {codes[4]}"},
             telegram_task(chat, f"tg {codes[4]}", "app-token-7", "http://tg.example:9090",
                           "w-tg")),
        ]
        for i, (path, body, want) in enumerate(sends):
            assert_ok(o.post(path, body))
            got = q.wait_for(i + 1, DELIVERY_TIMEOUT)
            assert_task(got[i], want, path="/queue/v1/task")
        quiet(q, len(sends))
        assert o.check("telegram", chat, codes[4]) is True
        assert_code_not_logged(o, *codes)
        assert "app-token-7" not in o.log_text()


# ---- the outbox: retries, outages, dead jobs -------------------------------------------

def test_queue_down_during_send_then_delivered_once(otpd_factory):
    """The Queue is down when the code is sent: the send still answers 200, the job waits
    and retries; once the Queue comes up on the same port it gets the task exactly once."""
    port = reserve_port()
    url = f"http://127.0.0.1:{port}"
    o = start_otpd(otpd_factory, dict(FAST, OTP_QUEUE_URL=url))
    phone, code = unique_phone(), unique_code(6)
    assert_ok(o.send("sms", phone, code))
    c = wait_jobs(o, lambda c: c["jobs"] and c["jobs"][0]["attempts"] >= 2
                  and c["jobs"][0]["state"] in ("pending", "sending"),
                  what="two failed attempts while the Queue is down")
    job = c["jobs"][0]
    assert job["state"] in ("pending", "sending") and job["last_error"], job
    assert o.check("sms", phone, code) is True  # accepted means stored, delivered or not
    with FakeHTTP(port=port) as q:
        reqs = q.wait_for(1, DELIVERY_TIMEOUT)
        assert_task(reqs[0], sms_task(phone, f"Your OTP is {code}"))
        c = wait_jobs(o, job_sent(), what="job sent")
        assert c["jobs"][0]["attempts"] >= 3
        quiet(q, 1)
    assert_code_not_logged(o, code)


def test_provider_500_three_times_then_200(otpd_factory):
    """Three 500s, then 200: four requests with the same task, the job sent with attempts
    4, and nothing after that."""
    with FakeHTTP([{"status": 500, "body": "busy", "times": 3},
                   {"status": 200, "json": {"status": True}}]) as q:
        o = start_otpd(otpd_factory, dict(FAST, OTP_QUEUE_URL=q.url))
        phone, code = unique_phone(), unique_code()
        assert_ok(o.send("sms", phone, code))
        reqs = quiet(q, 4, settle=2.0)
        for r in reqs:
            assert_task(r, sms_task(phone, f"Your OTP is {code}"))
        c = wait_jobs(o, job_sent(4), what="job sent with attempts 4")
        job = only_job(c)
        assert job["provider"] == "queue" and job["channel"] == "sms"
        assert c["counts"]["sent"] == 1 and c["counts"]["pending"] == 0
        assert_code_not_logged(o, code)
        # each failed attempt and the success is one log line
        recs = [r for r in o.log_records() if r.get("msg") == "outbox delivery"]
        assert [r["state"] for r in recs] == ["pending"] * 3 + ["sent"], recs


def test_provider_down_until_dead(otpd_factory):
    """With OTPD_OUTBOX_MAX_TRIES=3 and the provider down throughout, the job ends dead,
    with its error, and its payload is erased."""
    url = f"http://127.0.0.1:{reserve_port()}"
    o = start_otpd(otpd_factory, dict(FAST, OTP_QUEUE_URL=url, OTPD_OUTBOX_MAX_TRIES=3))
    phone, code = unique_phone(), unique_code(8)
    assert_ok(o.send("sms", phone, code))
    c = wait_jobs(o, lambda c: c["counts"]["dead"] == 1 and len(c["jobs"]) == 1,
                  what="a dead job", state="dead")
    job = only_job(c)
    assert job["state"] == "dead" and job["attempts"] == 3, job
    assert isinstance(job["last_error"], str) and job["last_error"], job
    assert c["counts"] == {"pending": 0, "sending": 0, "sent": 0, "dead": 1, "skipped": 0}
    assert outbox(o, state="pending")["jobs"] == []
    assert all("payload" not in j for j in outbox(o)["jobs"])
    assert stored_payloads(o) == 0
    assert_not_at_rest(o, code)
    assert_code_not_logged(o, code)
    # the code itself stays valid: only its delivery gave up
    assert o.check("sms", phone, code) is True


# ---- crashes and shutdowns ------------------------------------------------------------

def test_sigkill_while_delivering_then_delivered_after_restart(otpd_factory):
    """SIGKILL while the provider holds the first request (job claimed, not finished):
    after a restart on the same store the job's lease runs out and it is delivered."""
    with FakeHTTP([{"delay": 60, "times": 1}, {"status": 200, "json": {"status": True}}]) as q:
        env = dict(FAST, OTP_QUEUE_URL=q.url, OTPD_OUTBOX_LEASE=2, OTPD_PROVIDER_TIMEOUT=1)
        o = start_otpd(otpd_factory, env)
        phone, code = unique_phone(), unique_code()
        assert_ok(o.send("sms", phone, code))
        q.wait_for(1, DELIVERY_TIMEOUT)
        o.kill()
        held = q.requests[0]
        o.start()
        reqs = q.wait_for(2, DELIVERY_TIMEOUT)
        for r in reqs:
            assert r["body"] == held["body"]
        assert_task(reqs[-1], sms_task(phone, f"Your OTP is {code}"))
        wait_jobs(o, job_sent(), what="job sent after the restart")
        quiet(q, len(q.requests))
        assert o.check("sms", phone, code) is True
        assert_code_not_logged(o, code)


def test_sigkill_with_job_waiting_then_delivered_once(otpd_factory):
    """SIGKILL while the job waits for a provider that is down; bring the provider up and
    restart otpd on the same store: the message is delivered, once."""
    port = reserve_port()
    env = dict(FAST, OTP_QUEUE_URL=f"http://127.0.0.1:{port}", OTPD_OUTBOX_LEASE=2,
               OTPD_PROVIDER_TIMEOUT=1)
    o = start_otpd(otpd_factory, env)
    phone, code = unique_phone(), unique_code()
    assert_ok(o.send("sms", phone, code))
    wait_jobs(o, lambda c: c["jobs"] and c["jobs"][0]["attempts"] >= 1,
              what="a failed attempt")
    o.kill()
    with FakeHTTP(port=port) as q:
        o.start()
        reqs = quiet(q, 1)
        assert_task(reqs[0], sms_task(phone, f"Your OTP is {code}"))
        wait_jobs(o, job_sent(), what="job sent after the restart")
    assert o.check("sms", phone, code) is True


def test_sigterm_waits_for_delivery_in_flight(otpd_factory):
    """SIGTERM while the provider takes ~1 s: otpd finishes that delivery, records it, and
    exits 0 within OTPD_SHUTDOWN_TIMEOUT; a restart sends nothing again."""
    with FakeHTTP([{"delay": 1.0, "status": 200, "json": {"status": True}}]) as q:
        o = start_otpd(otpd_factory, dict(FAST, OTP_QUEUE_URL=q.url,
                                          OTPD_SHUTDOWN_TIMEOUT=5))
        phone, code = unique_phone(), unique_code()
        assert_ok(o.send("sms", phone, code))
        q.wait_for(1, DELIVERY_TIMEOUT)
        t0 = time.monotonic()
        rc = o.stop()
        took = time.monotonic() - t0
        assert rc == 0
        assert took < 5 + 2, f"exit took {took:.1f}s, OTPD_SHUTDOWN_TIMEOUT=5"
        first_run = o.runs[-1].read_text()
        assert re.search(r'msg="outbox delivery" job=1 .*state=sent', first_run), first_run
        o.start()
        job = only_job(wait_jobs(o, job_sent(1), what="job sent (recorded before exit)"))
        assert job["attempts"] == 1
        quiet(q, 1)
        assert_code_not_logged(o, code)


def test_sigterm_with_delivery_slower_than_shutdown_timeout(otpd_factory):
    """SIGTERM while the provider holds the request longer than OTPD_SHUTDOWN_TIMEOUT:
    otpd exits 0 within the timeout (plus a margin for the process itself), and the
    message is not lost: the next start delivers it."""
    # the provider would hold the request 30 s and otpd waits up to 15 s for it: an exit
    # bounded by either (and not by OTPD_SHUTDOWN_TIMEOUT) fails the timing below
    with FakeHTTP([{"delay": 30.0, "times": 1}, {"status": 200, "json": {"status": True}}]) as q:
        env = dict(FAST, OTP_QUEUE_URL=q.url, OTPD_SHUTDOWN_TIMEOUT=1,
                   OTPD_PROVIDER_TIMEOUT=15, OTPD_OUTBOX_LEASE=16)
        o = start_otpd(otpd_factory, env)
        phone, code = unique_phone(), unique_code()
        assert_ok(o.send("sms", phone, code))
        q.wait_for(1, DELIVERY_TIMEOUT)
        t0 = time.monotonic()
        rc = o.stop()
        took = time.monotonic() - t0
        assert rc == 0
        o.start()
        reqs = q.wait_for(2, DELIVERY_TIMEOUT)
        assert_task(reqs[-1], sms_task(phone, f"Your OTP is {code}"))
        wait_jobs(o, job_sent(), what="job sent after the restart")
        quiet(q, 2)
        assert took < 1 + 4, (
            f"exit took {took:.1f}s with OTPD_SHUTDOWN_TIMEOUT=1 (provider still holding "
            f"the request; OTPD_PROVIDER_TIMEOUT=15)")


# ---- codes at rest and in logs ----------------------------------------------------------

def test_code_never_in_clear_at_rest_or_in_logs(otpd_factory):
    """While the job waits for a provider that is down, the code (and the message that
    holds it) is nowhere in clear in the store; after delivery the payload is erased."""
    port = reserve_port()
    o = start_otpd(otpd_factory, dict(FAST, OTP_QUEUE_URL=f"http://127.0.0.1:{port}",
                                      OTPD_JANITOR_INTERVAL=1))
    phone, code = unique_phone(), unique_code(9)
    message = f"Your one-time code: {code}"
    assert_ok(o.post("/sms", {"phone": phone, "password": code, "lifetime": 600,
                              "message": message}))
    wait_jobs(o, lambda c: c["jobs"] and c["jobs"][0]["attempts"] >= 1,
              what="a failed attempt")
    assert o.check("sms", phone, code) is True
    assert o.check("sms", phone, unique_code(9)) is False
    assert_not_at_rest(o, code, message)
    assert_code_not_logged(o, code)
    with FakeHTTP(port=port) as q:
        q.wait_for(1, DELIVERY_TIMEOUT)
        c = wait_jobs(o, job_sent(), what="job sent")
    assert all("payload" not in j for j in c["jobs"]), c
    assert stored_payloads(o) == 0
    assert_not_at_rest(o, code, message)
    o.stop()
    assert_not_at_rest(o, code, message)  # checkpointed into otpd.db too
    assert_code_not_logged(o, code)


@pytest.mark.parametrize("codes_flag", [None, "false"])
def test_log_provider_masks_codes(otpd_factory, backend, codes_flag):
    """The log provider "delivers" with the code masked unless OTPD_LOG_CODES=true."""
    sqlite_only(backend)
    env = {} if codes_flag is None else {"OTPD_LOG_CODES": codes_flag}
    o = start_otpd(otpd_factory, env, provider="log")
    phone, code = unique_phone(), unique_code(8)
    assert_ok(o.send("sms", phone, code))
    rec = o.wait_log(lambda r: r.get("msg") == "deliver")
    assert rec["code"] == "*" * len(code), rec
    wait_jobs(o, job_sent(1), what="job sent by the log provider")
    assert_code_not_logged(o, code)


# ---- each provider once, against its fake -------------------------------------------------

def test_provider_telegram_http_telegram_notify(otpd_factory, backend):
    """telegram: POST {OTP_TELEGRAM_URL}/msg, X-Auth-Token, {"to":<number>,"message":...};
    its HTTP 500 "Sent message ..." counts as delivered and is not retried."""
    sqlite_only(backend)
    with FakeHTTP([{"path": "/msg", "status": 500,
                    "body": "Sent message to 1 recipient(s)"}]) as f:
        o = start_otpd(otpd_factory, dict(FAST, OTPD_TELEGRAM_PROVIDER="telegram",
                                          OTP_TELEGRAM_URL=f.url,
                                          OTP_TELEGRAM_APP_TOKEN="notify-token-5"),
                       provider=None)
        chat, code = unique_chat_id(), unique_code()
        assert_ok(o.send("telegram", chat, code))
        req = quiet(f, 1, settle=2.0)[0]
        assert req["method"] == "POST" and req["path"] == "/msg"
        assert req["header_map"].get("x-auth-token") == "notify-token-5"
        assert req["header_map"].get("content-type", "").startswith("application/json")
        assert ordered(req["body"]) == ordered({"to": int(chat),
                                                "message": f"Your OTP is {code}"})
        job = only_job(wait_jobs(o, job_sent(1), what="telegram job sent"))
        assert job["provider"] == "telegram"
        assert_code_not_logged(o, code)
        assert "notify-token-5" not in o.log_text()


def test_provider_telegram_other_500_is_retried(otpd_factory, backend):
    """telegram: a 500 that is not the "Sent message" quirk is a failure and retried."""
    sqlite_only(backend)
    with FakeHTTP([{"status": 500, "body": "Internal Server Error", "times": 1},
                   {"status": 500, "body": "Sent message"}]) as f:
        o = start_otpd(otpd_factory, dict(FAST, OTPD_TELEGRAM_PROVIDER="telegram",
                                          OTP_TELEGRAM_URL=f.url,
                                          OTP_TELEGRAM_APP_TOKEN="t"), provider=None)
        chat, code = unique_chat_id(), unique_code()
        assert_ok(o.send("telegram", chat, code))
        reqs = quiet(f, 2)
        assert reqs[0]["body"] == reqs[1]["body"]
        wait_jobs(o, job_sent(2), what="telegram job sent at the second attempt")


def test_provider_telegram_bot(otpd_factory, backend):
    """telegram_bot: POST {api}/bot{token}/sendMessage with {"chat_id":<number>,"text":...};
    result.message_id becomes the provider message id."""
    sqlite_only(backend)
    token = "123456789:AAH-fake_Token-xyz"
    with FakeHTTP([{"path_prefix": "/bot", "status": 200,
                    "json": {"ok": True, "result": {"message_id": 4242}}}]) as f:
        o = start_otpd(otpd_factory, {"OTPD_TELEGRAM_PROVIDER": "telegram_bot",
                                      "OTPD_TELEGRAM_BOT_TOKEN": token,
                                      "OTPD_TELEGRAM_API_URL": f.url}, provider=None)
        chat, code = "-" + unique_chat_id(), unique_code()
        assert_ok(o.post("/telegram", {"chat_id": chat, "password": code, "lifetime": 300,
                                       "message": f"Code {code}"}))
        req = quiet(f, 1)[0]
        assert req["method"] == "POST"
        assert req["path"] == f"/bot{token}/sendMessage"
        assert req["header_map"].get("content-type", "").startswith("application/json")
        body = json.loads(req["body"])
        assert isinstance(body["chat_id"], int)
        assert ordered(req["body"]) == ordered({"chat_id": int(chat), "text": f"Code {code}"})
        job = only_job(wait_jobs(o, job_sent(1), what="bot job sent"))
        assert job["provider"] == "telegram_bot" and job["provider_msg_id"] == "4242"
        assert_code_not_logged(o, code)
        assert token not in o.log_text()


def test_provider_smtp(otpd_factory, backend):
    """smtp: AUTH, MAIL FROM, RCPT TO, and a MIME message with Date, From, To, Subject
    (RFC 2047 when not ASCII), Message-ID, MIME-Version and the text (and html) parts."""
    sqlite_only(backend)
    with FakeSMTP(auth="otp-user:smtp-pw-9") as s:
        o = start_otpd(otpd_factory, {
            "OTPD_EMAIL_PROVIDER": "smtp", "OTPD_SMTP_URL": f"smtp://127.0.0.1:{s.port}",
            "OTPD_SMTP_USERNAME": "otp-user", "OTPD_SMTP_PASSWORD": "smtp-pw-9",
            "OTPD_SMTP_FROM": "OTP Service <otp@example.com>"}, provider=None)
        to, code, code2 = unique_email(), unique_code(), unique_code()
        assert_ok(o.send("email", to, code))  # subject Hello, text "Your OTP is <code>"
        m = s.wait_for(1, DELIVERY_TIMEOUT)[0]
        assert m["auth"] is not None and m["auth"]["username"] == "otp-user"
        assert m["mail_from"] == "otp@example.com"
        assert m["rcpt_to"] == [to]
        msg = email.message_from_bytes(m["data"], policy=email.policy.default)
        assert msg["From"].addresses[0].addr_spec == "otp@example.com"
        assert msg["From"].addresses[0].display_name == "OTP Service"
        assert msg["To"].addresses[0].addr_spec == to
        assert str(msg["Subject"]) == "Hello"
        assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", str(msg["Message-ID"]).strip()), \
            msg["Message-ID"]
        assert str(msg["MIME-Version"]).strip() == "1.0"
        assert msg["Date"] is not None and msg["Date"].datetime is not None
        assert msg.get_body(("plain",)).get_content().strip() == f"Your OTP is {code}"

        subject = "Ваш код"
        assert_ok(o.post("/email", {"email": to, "password": code2, "lifetime": 300,
                                    "subject": subject, "text": f"Код {code2}",
                                    "html": f"<p>Код <b>{code2}</b></p>"}))
        m2 = s.wait_for(2, DELIVERY_TIMEOUT)[1]
        raw_headers = m2["data"].split(b"\r\n\r\n", 1)[0]
        assert subject.encode() not in raw_headers  # encoded, not raw UTF-8 in a header
        msg2 = email.message_from_bytes(m2["data"], policy=email.policy.default)
        assert str(msg2["Subject"]) == subject
        assert msg2.get_content_type() == "multipart/alternative"
        assert msg2.get_body(("plain",)).get_content().strip() == f"Код {code2}"
        assert msg2.get_body(("html",)).get_content().strip() == f"<p>Код <b>{code2}</b></p>"
        assert msg["Message-ID"] != msg2["Message-ID"]
        quiet(s, 2)
        c = wait_jobs(o, all_in_state(2), what="two emails sent")
        assert {j["provider"] for j in c["jobs"]} == {"smtp"}
        assert_code_not_logged(o, code, code2)
        assert "smtp-pw-9" not in o.log_text()


def test_provider_twilio_sms_and_call(otpd_factory, backend):
    """twilio: Messages.json with To=+<phone>, From, Body; Calls.json with TwiML that says
    the digits; Basic auth with the SID and token; the job id as idempotency token."""
    sqlite_only(backend)
    sid, token = "AC" + "0123456789abcdef" * 2, "twilio-secret-3"
    base = f"/2010-04-01/Accounts/{sid}"
    with FakeHTTP([{"path": base + "/Messages.json", "status": 201,
                    "json": {"sid": "SM" + "1" * 32, "status": "queued"}},
                   {"path": base + "/Calls.json", "status": 201,
                    "json": {"sid": "CA" + "2" * 32, "status": "queued"}}]) as f:
        o = start_otpd(otpd_factory, {
            "OTPD_SMS_PROVIDER": "twilio", "OTPD_CALL_PROVIDER": "twilio",
            "OTPD_TWILIO_BASE_URL": f.url, "OTPD_TWILIO_ACCOUNT_SID": sid,
            "OTPD_TWILIO_AUTH_TOKEN": token, "OTPD_TWILIO_FROM": "+15550001111"},
            provider=None)
        phone, code, code2 = unique_phone(), unique_code(), unique_code(5)
        basic = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()

        assert_ok(o.send("sms", phone, code))
        req = f.wait_for(1, DELIVERY_TIMEOUT)[0]
        assert req["method"] == "POST" and req["path"] == base + "/Messages.json"
        assert req["header_map"].get("content-type", "").startswith(
            "application/x-www-form-urlencoded")
        assert req["header_map"].get("authorization") == basic
        assert parse_qsl(req["body_text"], strict_parsing=True) == [
            ("To", "+" + phone), ("From", "+15550001111"), ("Body", f"Your OTP is {code}")]
        job = only_job(wait_jobs(o, job_sent(1), what="sms sent"))
        assert job["provider_msg_id"] == "SM" + "1" * 32
        assert req["header_map"].get("i-twilio-idempotency-token", "").endswith(
            str(job["id"])), req["header_map"]

        assert_ok(o.send("call", phone, code2))
        req = f.wait_for(2, DELIVERY_TIMEOUT)[1]
        assert req["path"] == base + "/Calls.json"
        assert req["header_map"].get("authorization") == basic
        form = dict(parse_qsl(req["body_text"], strict_parsing=True))
        assert form["To"] == "+" + phone and form["From"] == "+15550001111"
        twiml = form["Twiml"]
        spoken = ", ".join(code2)
        assert re.fullmatch(r"<Response>(<Say[^>]*>[^<]*</Say>)<Pause[^>]*/>\1</Response>",
                            twiml), twiml
        assert twiml.count(spoken) == 2 and code2 not in twiml, twiml
        assert 'language="en-US"' in twiml
        c = wait_jobs(o, all_in_state(2), what="call sent")
        call_job = c["jobs"][0]
        assert call_job["channel"] == "call" and call_job["provider_msg_id"] == "CA" + "2" * 32
        assert req["header_map"].get("i-twilio-idempotency-token", "").endswith(
            str(call_job["id"]))
        quiet(f, 2)
        assert_code_not_logged(o, code, code2)
        assert token not in o.log_text()


def test_provider_whatsapp(otpd_factory, backend):
    """whatsapp: POST {base}/{phone number id}/messages, Bearer token, the authentication
    template with the code as body parameter and copy-code button parameter."""
    sqlite_only(backend)
    with FakeHTTP([{"path_prefix": "/", "status": 200,
                    "json": {"messages": [{"id": "wamid.XYZ"}]}}]) as f:
        o = start_otpd(otpd_factory, {
            "OTPD_WHATSAPP_PROVIDER": "whatsapp", "OTPD_WHATSAPP_BASE_URL": f.url + "/v19.0",
            "OTPD_WHATSAPP_TOKEN": "wa-token-1", "OTPD_WHATSAPP_PHONE_NUMBER_ID": "1098765",
            "OTPD_WHATSAPP_TEMPLATE": "otp_auth", "OTPD_WHATSAPP_LANGUAGE": "pt_BR",
            "OTPD_ADMIN_TOKEN": ADMIN_TOKEN}, provider=None)
        phone = unique_phone()
        # whatsapp is not a compat channel: it is reached through the native dialect, with
        # an app's key
        app = o.new_app()
        r = app.send("+" + phone, channel="whatsapp")
        assert r.status_code == 200, r.text
        assert r.json()["channel"] == "whatsapp"
        req = quiet(f, 1)[0]
        assert req["method"] == "POST" and req["path"] == "/v19.0/1098765/messages"
        assert req["header_map"].get("authorization") == "Bearer wa-token-1"
        body = json.loads(req["body"])
        code = body["template"]["components"][0]["parameters"][0]["text"]
        assert re.fullmatch(r"\S{4,}", code), body
        assert body == {
            "messaging_product": "whatsapp", "to": phone, "type": "template",
            "template": {"name": "otp_auth", "language": {"code": "pt_BR"}, "components": [
                {"type": "body", "parameters": [{"type": "text", "text": code}]},
                {"type": "button", "sub_type": "url", "index": "0",
                 "parameters": [{"type": "text", "text": code}]}]}}, body
        job = only_job(wait_jobs(o, job_sent(1), what="whatsapp sent"))
        assert job["provider_msg_id"] == "wamid.XYZ"
        assert app.verify_ok(r.json()["verification_id"], code)["verified"] is True
        assert_code_not_logged(o, code)
        assert "wa-token-1" not in o.log_text()


def test_provider_webhook_signed_and_stable_job_id(otpd_factory, backend):
    """webhook: the message as JSON, X-Otpd-Signature = sha256=HMAC(secret, body) that
    verifies, X-Otpd-Job the same on the retry; an answer {"id"} is the message id."""
    sqlite_only(backend)
    secret = "hook-secret-0"
    with FakeHTTP([{"status": 503, "body": "down", "times": 1},
                   {"status": 200, "json": {"id": "wh-77"}}]) as f:
        o = start_otpd(otpd_factory, dict(FAST, OTPD_SMS_PROVIDER="webhook",
                                          OTPD_WEBHOOK_URL=f.url + "/hooks/otp",
                                          OTPD_WEBHOOK_SECRET=secret), provider=None)
        phone, code = unique_phone(), unique_code()
        assert_ok(o.send("sms", phone, code))
        reqs = quiet(f, 2)
        job = only_job(wait_jobs(o, job_sent(2), what="webhook job sent at attempt 2"))
        assert job["provider_msg_id"] == "wh-77"
        for req in reqs:
            assert req["method"] == "POST" and req["path"] == "/hooks/otp"
            assert req["header_map"].get("content-type", "").startswith("application/json")
            want = "sha256=" + hmac.new(secret.encode(), req["body"], hashlib.sha256).hexdigest()
            got = req["header_map"].get("x-otpd-signature", "")
            assert hmac.compare_digest(got, want), (got, want)
            wrong = "sha256=" + hmac.new(b"other", req["body"], hashlib.sha256).hexdigest()
            assert got != wrong
            assert req["header_map"].get("x-otpd-job") == str(job["id"])
            body = json.loads(req["body"])
            assert body["id"] == job["id"] and body["channel"] == "sms"
            assert body["target"] == phone and body["code"] == code
            assert body["message"] == f"Your OTP is {code}"
            assert body.get("subject") is None and body.get("html") is None
        assert reqs[0]["body"] == reqs[1]["body"]
        assert_code_not_logged(o, code)
        assert secret not in o.log_text()


# ---- DUMMY and start-up refusal ------------------------------------------------------------

def test_dummy_delivers_nothing(otpd_factory):
    """DUMMY=true: the codes are stored and check true, nothing reaches the Queue, the jobs
    are recorded as skipped, and the log says so."""
    with FakeHTTP() as q:
        o = start_otpd(otpd_factory, {"DUMMY": "true", "OTP_QUEUE_URL": q.url,
                                      "OTP_TELEGRAM_APP_TOKEN": "x"})
        sends = [("sms", unique_phone()), ("call", unique_phone()),
                 ("email", unique_email()), ("telegram", unique_chat_id())]
        codes = {}
        for ch, target in sends:
            codes[ch] = unique_code()
            assert_ok(o.send(ch, target, codes[ch]))
        for ch, target in sends:
            assert o.check(ch, target, codes[ch]) is True
        c = outbox(o)
        assert c["counts"] == {"pending": 0, "sending": 0, "sent": 0, "dead": 0, "skipped": 4}
        assert sorted(j["channel"] for j in c["jobs"]) == sorted(ch for ch, _ in sends)
        assert all(j["state"] == "skipped" and j["attempts"] == 0 for j in c["jobs"]), c
        assert len(outbox(o, state="skipped")["jobs"]) == 4
        time.sleep(1.5)  # the subject is absence: give a worker every chance to send
        assert q.requests == []
        assert re.search(r"DUMMY", o.log_text()), o.log_tail()
        assert_code_not_logged(o, *codes.values())


@pytest.mark.parametrize("env, var", [
    ({"OTPD_PROVIDER": "smtp"}, "OTPD_SMTP_URL"),
    ({"OTPD_EMAIL_PROVIDER": "smtp"}, "OTPD_SMTP_URL"),
    ({"OTPD_SMS_PROVIDER": "twilio", "OTPD_TWILIO_ACCOUNT_SID": "AC1",
      "OTPD_TWILIO_FROM": "+1555"}, "OTPD_TWILIO_AUTH_TOKEN"),
    ({"OTPD_PROVIDER": "webhook", "OTPD_WEBHOOK_URL": "http://127.0.0.1:9/x"},
     "OTPD_WEBHOOK_SECRET"),
])
def test_refuses_to_start_with_incomplete_provider(tmp_path, env, var):
    """A chosen provider without its settings: exit 2 at start, naming the variable."""
    e = dict(env, OTPD_DATA_DIR=str(tmp_path / "data"),
             OTPD_LISTEN=f"127.0.0.1:{reserve_port()}")
    cp = run_otpd([], env=e, timeout=60)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    assert var in cp.stderr, cp.stderr


def test_check_config_names_incomplete_provider(tmp_path):
    """--check-config validates "as otpd itself does at start" (README): a chosen provider
    without its settings is a problem it reports, with exit 2."""
    cp = run_otpd(["--check-config"], env={"OTPD_PROVIDER": "smtp",
                                          "OTPD_DATA_DIR": str(tmp_path / "d")})
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "OTPD_SMTP_URL" in cp.stderr + cp.stdout
