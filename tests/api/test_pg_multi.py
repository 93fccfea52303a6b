"""Several otpd processes on one PostgreSQL database and schema, and PostgreSQL trouble.

Needs the test server of scripts/pg-test-server.sh (OTPD_TEST_PG_HOST etc., see
conftest.py); skipped without it. The restart test also needs OTPD_TEST_PG_SOCKET_DIR (the
cluster's directory: it runs pg_ctl on DIR/data as the cluster's owner).

Every pair of processes shares PG_SCHEMA and OTPD_SECRET_KEY, as README "Several
instances" asks; everything that must stay exact across them (limits, wrong-check
counters, outbox claims) is raced from threads against both at once.
"""

import json
import os
import re
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from e2elib import (DELIVERY_TIMEOUT, all_in_state, fakes, outbox, pg_as_owner, pg_bin, quiet,
                    secret_key, wait_jobs, wait_until)
from otpdlib import (assert_error, assert_json, assert_ok, pg_settings, pg_sql, run_otpd,
                     send_body, unique_code, unique_phone)

PG = pg_settings()
pytestmark = pytest.mark.skipif(PG is None, reason="needs OTPD_TEST_PG_HOST "
                                "(eval \"$(scripts/pg-test-server.sh env DIR)\")")


@pytest.fixture(scope="module")
def backend():
    """This module is about PostgreSQL only (overrides conftest's sqlite/pg fixture)."""
    return "pg"


class Pair:
    """Two otpd processes, a and b, on one schema (a's) with one key."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __iter__(self):
        return iter((self.a, self.b))

    def pick(self, i):
        return self.a if i % 2 == 0 else self.b


def make_pair(factory, env=None, queue=False, start_b=True):
    """Start a on a fresh schema, then b on the same schema and key (unless start_b is
    false). queue: OTPD_PROVIDER unset (the queue provider, the default) instead of the
    harness's log provider."""
    env = dict(env or {}, OTPD_SECRET_KEY=secret_key())
    a = factory(env=env, start=False)
    b = factory(env=env, start=False)
    b.env["PG_SCHEMA"] = a.schema  # b's own fresh schema stays unused (dropped at teardown)
    for o in (a, b):
        if queue:
            o.env.pop("OTPD_PROVIDER", None)
    a.start()
    if start_b:
        b.start()
    return Pair(a, b)


@pytest.fixture
def pair_factory(otpd_factory):
    """make_pair, with b stopped before a at teardown (b must not outlive a's schema)."""
    made = []

    def make(env=None, queue=False, start_b=True):
        p = make_pair(otpd_factory, env, queue, start_b)
        made.append(p)
        return p

    yield make
    for p in reversed(made):
        for o in (p.b, p.a):
            if o.running():
                o.stop()


def race(n, fn):
    """Run fn(i) for i in range(n) from n threads released together; results in order."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(timeout=60)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(run, range(n)))


def psql_value(pg, sql):
    """One value of a one-row, one-column query (via psql -A -t)."""
    psql = pg_bin("psql")
    if psql is None:
        pytest.skip("psql not installed")
    env = dict(os.environ)
    if pg.get("password"):
        env["PGPASSWORD"] = pg["password"]
    cp = subprocess.run([psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", pg["host"],
                         "-p", str(pg["port"]), "-U", pg["user"], "-d", pg["database"],
                         "-c", sql], env=env, capture_output=True, text=True, timeout=60,
                        check=True)
    return cp.stdout.strip()


# ---- limits and attempts across processes ----------------------------------------------

def test_phone_limit_exact_across_two_processes(pair_factory):
    """rate 5 per phone: 40 concurrent sends for one phone, half through each process,
    give exactly 5 x 200 and 35 x 400 phone_limit; three times in a row."""
    p = pair_factory()
    assert_ok(p.a.post("/limit/sms", {"phones": [{"minutes": 10, "rate": 5}]}))
    got = assert_json(p.b.get("/limit/sms"), 200)
    assert got["content"]["phones"] == [{"minutes": 10, "rate": 5}]
    for round_ in range(3):
        phone = unique_phone()
        resps = race(40, lambda i: p.pick(i).send("sms", phone, unique_code()))
        ok = [r for r in resps if r.status_code == 200]
        refused = [r for r in resps if r.status_code == 400]
        assert len(ok) == 5, (round_, [(r.status_code, r.text) for r in resps])
        assert len(refused) == 35, (round_, [(r.status_code, r.text) for r in resps])
        for r in ok:
            assert_ok(r)
        for r in refused:
            assert_error(r, 400, status_code="phone_limit")
            assert r.json()["message"] == "Phone limit has been reached"
        # both processes took part in the accepted ones' race and see the same count
        for o in p:
            assert_error(o.send("sms", phone, unique_code()), 400, status_code="phone_limit")


def test_ip_limit_exact_across_two_processes(pair_factory):
    """rate 5 per ip: 40 concurrent sends from one ip to 40 different phones, half
    through each process, give exactly 5 x 200 and 35 x 400 ip_limit (the send takes
    the ip's lock only when the channel has ip rules); three times in a row."""
    p = pair_factory()
    assert_ok(p.a.post("/limit/sms", {"ips": [{"minutes": 10, "rate": 5}]}))
    for round_ in range(3):
        ip = f"10.{round_}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
        resps = race(40, lambda i: p.pick(i).send("sms", unique_phone(), unique_code(), ip=ip))
        ok = [r for r in resps if r.status_code == 200]
        refused = [r for r in resps if r.status_code == 400]
        assert len(ok) == 5, (round_, [(r.status_code, r.text) for r in resps])
        assert len(refused) == 35, (round_, [(r.status_code, r.text) for r in resps])
        for r in refused:
            assert_error(r, 400, status_code="ip_limit")


def test_wrong_checks_concurrent_across_processes_void_the_code(pair_factory):
    """12 concurrent wrong checks through both processes (OTPD_MAX_CHECK_ATTEMPTS=5): all
    false, and then the right code is false too (voided), through either process."""
    p = pair_factory({"OTPD_MAX_CHECK_ATTEMPTS": 5})
    phone, code = unique_phone(), unique_code()
    p.a.send_ok("sms", phone, code)
    wrong = [c for c in (unique_code() for _ in range(30)) if c != code][:12]
    results = race(12, lambda i: p.pick(i).check("sms", phone, wrong[i]))
    assert results == [False] * 12
    assert p.a.check("sms", phone, code) is False
    assert p.b.check("sms", phone, code) is False
    # a new code works again
    code2 = unique_code()
    p.b.send_ok("sms", phone, code2)
    assert p.a.check("sms", phone, code2) is True


def test_wrong_checks_counted_exactly_across_processes(pair_factory):
    """4 wrong checks alternating between the processes leave the code valid; a right
    check does not reset the count (src/core/otp.c otp_check_decide keeps `failures` on a
    match), so one more wrong check is the 5th and voids the code."""
    p = pair_factory({"OTPD_MAX_CHECK_ATTEMPTS": 5})
    phone, code = unique_phone(), unique_code()
    p.a.send_ok("sms", phone, code)
    wrong = [c for c in (unique_code() for _ in range(10)) if c != code]
    for i in range(4):
        assert p.pick(i).check("sms", phone, wrong[i]) is False
    assert p.b.check("sms", phone, code) is True
    assert p.a.check("sms", phone, code) is True
    assert p.b.check("sms", phone, wrong[4]) is False  # the 5th wrong check
    assert p.a.check("sms", phone, code) is False
    assert p.b.check("sms", phone, code) is False


# ---- codes and deliveries across processes ---------------------------------------------

def test_codes_and_deliveries_across_two_processes(pair_factory):
    """Codes sent through one process check true through the other; with both processes'
    delivery workers claiming from one outbox, each of 20 sends reaches the Queue once."""
    with fakes.FakeHTTP() as q:
        p = pair_factory({"OTP_QUEUE_URL": q.url, "OTPD_OUTBOX_WORKERS": 3}, queue=True)
        sends = [(unique_phone(), unique_code()) for _ in range(20)]
        race(20, lambda i: p.pick(i).send_ok("sms", *sends[i]))
        reqs = quiet(q, 20, settle=2.0)
        phones = sorted(json.loads(r["body"])["json"]["phones"] for r in reqs)
        assert phones == sorted(ph for ph, _ in sends)
        for i, (phone, code) in enumerate(sends):
            assert p.pick(i + 1).check("sms", phone, code) is True
        for o in p:
            c = wait_jobs(o, all_in_state(20), what="20 jobs sent")
            assert c["counts"] == {"pending": 0, "sending": 0, "sent": 20, "dead": 0,
                                   "skipped": 0}
            assert all(j["attempts"] == 1 for j in c["jobs"]), c
        # one "outbox delivery" line per job over both processes: no job was claimed twice
        delivered_by = [sum(1 for r in o.log_records() if r.get("msg") == "outbox delivery")
                        for o in p]
        assert sum(delivered_by) == 20, delivered_by


def test_job_of_a_killed_process_is_delivered_by_the_other(pair_factory):
    """Process a claims a job and is SIGKILLed while the provider holds the request; the
    other process, on the same database, re-claims the job when its lease runs out and
    delivers it."""
    with fakes.FakeHTTP([{"delay": 60, "times": 1},
                         {"status": 200, "json": {"status": True}}]) as q:
        env = {"OTP_QUEUE_URL": q.url, "OTPD_OUTBOX_LEASE": 2, "OTPD_PROVIDER_TIMEOUT": 1}
        p = pair_factory(env, queue=True, start_b=False)
        phone, code = unique_phone(), unique_code()
        p.a.send_ok("sms", phone, code)
        q.wait_for(1, DELIVERY_TIMEOUT)
        p.a.kill()
        p.b.start()
        reqs = q.wait_for(2, DELIVERY_TIMEOUT)
        assert reqs[1]["body"] == reqs[0]["body"]
        assert json.loads(reqs[1]["body"])["json"]["phones"] == phone
        c = wait_jobs(p.b, all_in_state(1), what="job sent by b")
        assert c["jobs"][0]["state"] == "sent"
        assert any(r.get("msg") == "outbox delivery" and r.get("state") == "sent"
                   for r in p.b.log_records())
        quiet(q, 2)
        assert p.b.check("sms", phone, code) is True


# ---- PostgreSQL goes away and comes back ------------------------------------------------

def _cluster():
    d = os.environ.get("OTPD_TEST_PG_SOCKET_DIR")
    if not d or not (Path(d) / "data" / "PG_VERSION").exists():
        pytest.skip("needs the cluster directory of scripts/pg-test-server.sh "
                    "(OTPD_TEST_PG_SOCKET_DIR)")
    if pg_bin("pg_ctl") is None:
        pytest.skip("pg_ctl not installed")
    return Path(d)


def _pg_ctl(*args):
    cp = pg_as_owner([pg_bin("pg_ctl")] + list(args))
    assert cp.returncode == 0, f"pg_ctl {args}: {cp.stdout}\n{cp.stderr}"


def test_postgres_restart_under_load(pair_factory):
    """While sends go on in a loop through both processes, PostgreSQL stops (fast) and
    starts again on the same port: during the outage sends answer 503 JSON and /ready
    503; nothing crashes; afterwards sends and /ready succeed within seconds, and every
    send that was answered 200 is checkable."""
    cluster = _cluster()
    port = (cluster / "port").read_text().strip()
    p = pair_factory()
    results, stop = [], threading.Event()
    lock = threading.Lock()

    def load():
        i = 0
        deadline = time.monotonic() + 90  # bounded whatever happens below
        while not stop.is_set() and time.monotonic() < deadline:
            o = p.pick(i)
            phone, code = unique_phone(), unique_code()
            t = time.monotonic()
            try:
                r = o.post("/sms", send_body("sms", phone, code), timeout=30)
                res = (t, o, phone, code, r.status_code, r.text,
                       r.headers.get("Content-Type", ""))
            except requests.RequestException as e:
                res = (t, o, phone, code, None, repr(e), "")
            with lock:
                results.append(res)
            i += 1
            time.sleep(0.02)

    th = threading.Thread(target=load, daemon=True)
    th.start()
    try:
        wait_until(lambda: sum(1 for r in results if r[4] == 200) >= 10, 30,
                   "10 sends before the outage")
        t_stop = time.monotonic()
        _pg_ctl("-D", str(cluster / "data"), "-m", "fast", "-w", "-t", "60", "stop")
        try:
            for o in p:
                wait_until(lambda: o.get("/ready").status_code == 503, 30,
                           "/ready 503 during the outage")
                body = assert_json(o.get("/ready"), 503)
                assert body["status"] is False
            wait_until(lambda: any(r[0] > t_stop and r[4] == 503 for r in results), 30,
                       "a 503 send during the outage")
            time.sleep(1.0)  # the outage is the subject: let the load run into it
        finally:
            _pg_ctl("-D", str(cluster / "data"), "-l", str(cluster / "server.log"), "-w",
                    "-t", "60", "-o", f"-p {port}", "start")
        t_up = time.monotonic()
        for o in p:
            wait_until(lambda: o.get("/ready").status_code == 200, 30,
                       "/ready 200 after the restart")
        wait_until(lambda: sum(1 for r in results if r[0] > t_up and r[4] == 200) >= 10,
                   30, "10 sends after the restart")
        first_ok = min(r[0] for r in results if r[0] > t_up and r[4] == 200)
        wait_until(lambda: sum(1 for r in results if r[0] > first_ok + 2) >= 10, 30,
                   "10 more sends, 2 s after the first success")
    finally:
        stop.set()
        th.join(60)
    assert not th.is_alive()
    for o in p:
        assert o.running(), "otpd died during the outage:\n" + o.log_tail()

    statuses = {r[4] for r in results}
    assert statuses <= {200, 503}, [(r[4], r[5]) for r in results if r[4] not in (200, 503)]
    for r in results:
        if r[4] == 503:
            assert r[6].split(";")[0].strip() == "application/json", r
            body = json.loads(r[5])
            assert body["status"] is False and body.get("message"), r[5]
    first_ok_after = min(r[0] for r in results if r[0] > t_up and r[4] == 200)
    assert first_ok_after - t_up < 10, f"sends failed for {first_ok_after - t_up:.1f}s after"
    late = [r for r in results if r[0] > first_ok_after + 2]
    assert late and all(r[4] == 200 for r in late), [(r[4], r[5]) for r in late if r[4] != 200]
    accepted = [r for r in results if r[4] == 200]
    for i, (_, _, phone, code, *_rest) in enumerate(accepted):
        assert p.pick(i).check("sms", phone, code) is True, (phone, "accepted but lost")


# ---- PG_REAL_HOST creates what is missing ----------------------------------------------

def test_pg_real_host_creates_database_and_schema(otpd_factory):
    """A database that does not exist yet, and a schema in it: with PG_REAL_HOST otpd
    creates both at start, migrates, and serves."""
    db = "otpd_e2e_" + secrets.token_hex(5)
    schema = "s_" + secrets.token_hex(5)
    o = otpd_factory(env={"PG_DATABASE": db, "PG_SCHEMA": schema,
                          "PG_REAL_HOST": PG["host"]}, start=False)
    try:
        o.start()
        phone, code = unique_phone(), unique_code()
        o.send_ok("sms", phone, code)
        assert o.check("sms", phone, code) is True
        assert assert_json(o.get("/ready"), 200) == {"status": True}
        assert psql_value(PG, f"SELECT count(*) FROM pg_database WHERE datname = '{db}'") == "1"
        other = dict(PG, database=db)
        assert psql_value(other, "SELECT count(*) FROM information_schema.tables "
                                 f"WHERE table_schema = '{schema}' "
                                 "AND table_name = 'otpd_verification'") == "1"
        o.stop()
        o.start()  # a second start finds everything in place
        assert o.check("sms", phone, code) is True
        o.stop()
    finally:
        if o.running():
            o.stop(check=False)
        pg_sql(PG, f'DROP DATABASE IF EXISTS "{db}"')


# ---- otpd migrate-from-legacy ------------------------------------------------------------

LEGACY_TABLES = """
CREATE TABLE otp_password (id serial PRIMARY KEY, channel int2, target varchar,
    password varchar, ip varchar, expire_at timestamp, created_at timestamp);
CREATE TABLE otp_limit (id serial PRIMARY KEY, channel int2, measure int2, rate int,
    minutes int);
"""


def test_migrate_from_legacy(otpd_factory):
    """The old service's tables (COMPAT.md "Storage the old service used") in a fresh
    schema: `otpd migrate-from-legacy` imports the rules and the live codes (not the
    expired ones) and prints its counts; otpd then checks them and shows the rules."""
    o = otpd_factory(env={"OTPD_SECRET_KEY": secret_key()}, start=False)
    s = f'"{o.schema}"'
    live = "LOCALTIMESTAMP + interval '10 minutes'"
    dead = "LOCALTIMESTAMP - interval '1 minute'"
    made = "LOCALTIMESTAMP - interval '2 minutes'"
    pg_sql(PG, f"SET search_path TO {s}; {LEGACY_TABLES}")
    rows = [
        # channel sms=0 email=1 call=2 telegram=3; target, password, ip, expire_at
        (0, "77011234567", "12345", "123.123.123.123", live),
        (0, "77019999999", "54321", None, dead),
        (1, "foobar@example.com", "777111", None, live),
        (2, "+77012223344", "2468", None, live),
        (3, "1234567890", "909090", None, live),
        (1, "old@example.com", "31337", None, dead),
    ]
    values = ", ".join(
        f"({ch}, '{t}', '{pw}', {'NULL' if ip is None else repr(ip)}, {exp}, {made})"
        for ch, t, pw, ip, exp in rows)
    pg_sql(PG, f"INSERT INTO {s}.otp_password (channel, target, password, ip, expire_at, "
               f"created_at) VALUES {values}")
    pg_sql(PG, f"INSERT INTO {s}.otp_limit (channel, measure, rate, minutes) VALUES "
               "(0, 0, 3, 10), (0, 1, 20, 60), (1, 0, 2, 5), (2, 0, 4, 30)")

    cp = run_otpd(["migrate-from-legacy"], env=o.env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    m = re.search(r"imported (\d+) limit rules \((\d+) skipped\), (\d+) live codes "
                  r"\((\d+) already present, (\d+) skipped\)", cp.stdout)
    assert m, cp.stdout
    assert m.groups() == ("4", "0", "4", "0", "0"), cp.stdout
    for code in ("12345", "777111", "2468", "909090"):
        assert code not in cp.stdout + cp.stderr

    # a second run changes nothing and says so
    cp2 = run_otpd(["migrate-from-legacy"], env=o.env, timeout=120)
    assert cp2.returncode == 0, cp2.stderr
    assert "0 live codes (4 already present, 0 skipped)" in cp2.stdout, cp2.stdout

    o.start()
    assert o.check("sms", "77011234567", "12345") is True
    assert o.check("sms", "77011234567", "54321") is False
    assert o.check("sms", "77019999999", "54321") is False  # expired: not imported
    assert o.check("email", "foobar@example.com", "777111") is True
    assert o.check("email", "old@example.com", "31337") is False
    assert o.check("call", "77012223344", "2468") is True
    assert o.check("sms", "77012223344", "2468") is True  # /sms/check takes call codes
    assert o.check("telegram", "1234567890", "909090") is True

    def limits(ch):
        return assert_json(o.get(f"/limit/{ch}"), 200)["content"]
    assert limits("sms") == {"ips": [{"minutes": 60, "rate": 20}],
                             "phones": [{"minutes": 10, "rate": 3}]}
    assert limits("email") == {"ips": [], "emails": [{"minutes": 5, "rate": 2}]}
    assert limits("call") == {"ips": [], "phones": [{"minutes": 30, "rate": 4}]}
    # the imported send counts in the window: 3 per 10 minutes, one already used
    phone = "77011234567"
    for _ in range(2):
        o.send_ok("sms", phone, unique_code(), ip="10.0.0.1")
    assert_error(o.send("sms", phone, unique_code(), ip="10.0.0.1"), 400,
                 status_code="phone_limit")
    # imported jobs are recorded as skipped, nothing is delivered again
    c = outbox(o, state="skipped")
    assert len([j for j in c["jobs"] if j["provider"] == "legacy"]) == 4, c


def test_a_statement_failing_inside_a_send_or_check_rolls_back_and_the_pool_recovers(
        otpd_factory):
    """A send and a check each run as two pipelined round trips. When PostgreSQL refuses
    a statement in the middle (here a trigger raises), the request answers 503 JSON,
    nothing of it is written, and the same pooled connections serve the next requests."""
    o = otpd_factory(env={"OTPD_PG_POOL": 2, "OTPD_MAX_CHECK_ATTEMPTS": 3})
    s = o.schema
    kept, kept_code = unique_phone(), unique_code()
    assert_ok(o.send("sms", kept, kept_code))
    # approved once now, so checking it again changes nothing
    assert o.check("sms", kept, kept_code) is True
    pg_sql(PG, f'CREATE FUNCTION "{s}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
               "$$BEGIN RAISE EXCEPTION 'refused by test'; END$$")
    pg_sql(PG, f'CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON "{s}".otpd_verification '
               f'FOR EACH ROW EXECUTE FUNCTION "{s}".refuse()')
    lost = unique_phone()
    for _ in range(3):  # more requests than pooled connections
        assert_error(o.send("sms", lost, unique_code()), 503)
        # a wrong check must write its counter: refused the same way, nothing counted
        assert_error(o.get("/sms/check", {"phone": kept, "password": "000000"}), 503)
    # a right check writes nothing: still answered on the same connections
    assert o.check("sms", kept, kept_code) is True

    pg_sql(PG, f'DROP TRIGGER refuse ON "{s}".otpd_verification')
    rows = pg_sql(PG, f"SELECT count(*) FROM \"{s}\".otpd_verification "
                      f"WHERE target = '{lost}'")
    assert rows.stdout.splitlines()[2].strip() == "0", rows.stdout
    code = unique_code()
    assert_ok(o.send("sms", lost, code))
    # the three refused wrong checks counted nothing: two more wrong ones leave it live
    for _ in range(2):
        assert o.check("sms", kept, "000000") is False
    assert o.check("sms", kept, kept_code) is True
    assert o.check("sms", lost, code) is True
