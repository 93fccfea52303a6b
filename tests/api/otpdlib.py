"""otpdlib - drive a real otpd process from pytest (used by conftest.py and the tests).

Nothing here mocks otpd: an `Otpd` is the binary under test, started on a free port of
127.0.0.1 with a fresh data directory (and, for PostgreSQL, a fresh schema), talked to
over real HTTP with `requests`, and stopped with SIGTERM. See conftest.py for the
fixtures and the list of what each helper does.
"""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]

# Generous: the suite must pass on a loaded 2-core machine and under ASan.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")

# Variables otpd (or the old service) reads; never inherited from the caller's shell.
_OWN_PREFIXES = ("OTPD_", "OTP_", "PG_", "HTTP_AUTH_", "PHP_PM_")
_OWN_NAMES = ("DUMMY",)

# The target field of each compat channel.
TARGET_FIELD = {"sms": "phone", "call": "phone", "email": "email", "telegram": "chat_id"}


def otpd_bin():
    """The binary under test: $OTPD_BIN, else build/otpd (or build/src/otpd) of the repo."""
    given = os.environ.get("OTPD_BIN")
    if given:
        p = Path(given)
        return p if p.is_absolute() else (REPO / p)
    for cand in (REPO / "build" / "otpd", REPO / "build" / "src" / "otpd"):
        if cand.exists():
            return cand
    return REPO / "build" / "otpd"


def require_bin():
    """The binary under test, or an AssertionError saying how to get one."""
    b = otpd_bin()
    if not (b.is_file() and os.access(b, os.X_OK)):
        raise AssertionError(f"no otpd binary at {b}: build it (make build) or set OTPD_BIN")
    return b


def free_port():
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env():
    """The caller's environment minus every variable otpd reads, plus sanitizer options."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_OWN_PREFIXES) and k not in _OWN_NAMES}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def sanitizer_report(text):
    """The first sanitizer marker found in text, or None."""
    for m in SANITIZER_MARKERS:
        if m in text:
            return m
    return None


def run_otpd(args, env=None, timeout=60):
    """Run otpd to completion (e.g. ["--check-config"]) with a clean environment plus env.
    Returns the CompletedProcess (text mode). Fails if a sanitizer reported anything."""
    e = base_env()
    e.update({k: str(v) for k, v in (env or {}).items()})
    cp = subprocess.run([str(require_bin())] + list(args), env=e, capture_output=True,
                        text=True, timeout=timeout)
    found = sanitizer_report(cp.stderr)
    assert found is None, f"sanitizer report ({found}) from otpd {args}:\n{cp.stderr}"
    return cp


# ---- unique values, so tests sharing one instance never see each other's codes -------

def unique_phone():
    """11 random digits starting with 7 (a valid phone, never the same twice in practice)."""
    return "7" + "".join(str(secrets.randbelow(10)) for _ in range(10))


def unique_email():
    return f"u{secrets.token_hex(6)}@example.com"


def unique_chat_id():
    return str(1_000_000_000 + secrets.randbelow(8_000_000_000))


def unique_code(digits=6):
    """A random code of `digits` digits whose first digit is not 0."""
    return str(1 + secrets.randbelow(9)) + "".join(
        str(secrets.randbelow(10)) for _ in range(digits - 1))


def unique_target(channel):
    return {"sms": unique_phone, "call": unique_phone, "email": unique_email,
            "telegram": unique_chat_id}[channel]()


def send_body(channel, target, code, lifetime=300, **extra):
    """A complete, valid compat send body for channel (the seed docs' shape)."""
    body = {TARGET_FIELD[channel]: target, "password": code, "lifetime": lifetime}
    if channel in ("sms", "telegram"):
        body["message"] = f"Your OTP is {code}"
    elif channel == "email":
        body["subject"] = "Hello"
        body["text"] = f"Your OTP is {code}"
    body.update(extra)
    return body


# ---- responses --------------------------------------------------------------------------

def pairs(resp_or_text):
    """The top-level JSON object of a response as a list of (key, value), in the order the
    server wrote them (json.loads with object_pairs_hook)."""
    text = resp_or_text if isinstance(resp_or_text, str) else resp_or_text.text
    return json.loads(text, object_pairs_hook=lambda kv: kv)


def keys(resp):
    return [k for k, _ in pairs(resp)]


def is_json(resp):
    ct = resp.headers.get("Content-Type", "")
    return ct.split(";")[0].strip().lower() == "application/json"


def assert_json(resp, status):
    """Assert the HTTP status and a JSON Content-Type; return the parsed body."""
    assert resp.status_code == status, (
        f"expected HTTP {status}, got {resp.status_code}: {resp.text!r}")
    assert is_json(resp), f"Content-Type {resp.headers.get('Content-Type')!r}: {resp.text!r}"
    return resp.json()


def assert_ok(resp):
    """200 {"status":true} exactly."""
    body = assert_json(resp, 200)
    assert body == {"status": True}, resp.text
    return body


def assert_error(resp, status, field=None, status_code=None):
    """An error answer: HTTP status, JSON, status false, a message (naming `field` when
    given), keys in the order status, status_code, message. Returns the body."""
    body = assert_json(resp, status)
    assert body.get("status") is False, resp.text
    assert isinstance(body.get("message"), str) and body["message"], resp.text
    order = [k for k in keys(resp) if k in ("status", "status_code", "message", "content")]
    assert order == [k for k in ("status", "status_code", "message", "content") if k in body], (
        f"key order {keys(resp)}: {resp.text}")
    if field is not None:
        assert field in body["message"], f"message does not name {field!r}: {resp.text}"
    if status_code is not None:
        assert body.get("status_code") == status_code, resp.text
    return body


def assert_invalid(resp, field):
    """400 for a bad value of `field`: the message names it; a status_code, if any, is
    invalid_parameter (COMPAT.md: "otpd may add")."""
    body = assert_error(resp, 400, field=field)
    if "status_code" in body:
        assert body["status_code"] == "invalid_parameter", resp.text
    return body


def missing_text(field):
    """The exact body text's message of a missing field."""
    return f"\"{field}\" parameter must be set"


def assert_missing(resp, field):
    """HTTP 400 and exactly {"status":false,"message":"\"<field>\" parameter must be set"}
    (no status_code), keys in that order."""
    body = assert_json(resp, 400)
    assert pairs(resp) == [("status", False), ("message", missing_text(field))], (
        f"expected missing {field!r}: {resp.text}")
    return body


# ---- logfmt -----------------------------------------------------------------------------

_LOGFMT = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    """One logfmt line -> dict (quoted values unescaped)."""
    out = {}
    for k, v in _LOGFMT.findall(line):
        if v.startswith('"'):
            v = v[1:-1]
            v = re.sub(r'\\x([0-9a-fA-F]{2})', lambda m: chr(int(m.group(1), 16)), v)
            v = (v.replace('\\"', '"').replace("\\n", "\n").replace("\\r", "\r")
                 .replace("\\t", "\t").replace("\\\\", "\\"))
        out[k] = v
    return out


# ---- PostgreSQL schemas -------------------------------------------------------------------

def pg_settings():
    """The test PostgreSQL server from scripts/pg-test-server.sh's env, or None."""
    host = os.environ.get("OTPD_TEST_PG_HOST")
    if not host:
        return None
    return {
        "host": host,
        "port": os.environ.get("OTPD_TEST_PG_PORT", "5432"),
        "user": os.environ.get("OTPD_TEST_PG_USER", "postgres"),
        "database": os.environ.get("OTPD_TEST_PG_DATABASE", "otpd_test"),
        "password": os.environ.get("OTPD_TEST_PG_PASSWORD"),
    }


def _pg_tool(name):
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def pg_dump_schema(pg, schema):
    """Every row of a schema as pg_dump's text (bytes), or None without pg_dump."""
    tool = _pg_tool("pg_dump")
    if tool is None:
        return None
    env = base_env()
    if pg.get("password"):
        env["PGPASSWORD"] = pg["password"]
    return subprocess.run(
        [tool, "-h", pg["host"], "-p", str(pg["port"]), "-U", pg["user"], "-d", pg["database"],
         "-n", schema, "--data-only", "--inserts"],
        env=env, capture_output=True, timeout=120, check=True).stdout


def pg_sql(pg, sql):
    """Run one SQL statement on the test server with psql (None if psql is missing)."""
    psql = _pg_tool("psql")
    if psql is None:
        return None
    env = base_env()
    if pg.get("password"):
        env["PGPASSWORD"] = pg["password"]
    return subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg["host"], "-p", str(pg["port"]),
         "-U", pg["user"], "-d", pg["database"], "-c", sql],
        env=env, capture_output=True, text=True, timeout=60, check=True)


# ---- the process ----------------------------------------------------------------------------

class Otpd:
    """One otpd under test. Construct through the `otpd_factory` fixture (conftest.py).

    Attributes: base (http://127.0.0.1:PORT), port, data_dir (Path), env (dict given to
    the process, without the inherited part), backend ("sqlite"/"pg"), schema (pg),
    proc (Popen or None), runs (list of stderr log Paths, one per start)."""

    def __init__(self, workdir, env=None, backend="sqlite", pg=None):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.backend = backend
        self.pg = pg
        self.schema = None
        self.env = {"OTPD_PROVIDER": "log", "OTPD_DATA_DIR": str(self.data_dir)}
        if backend == "pg":
            if pg is None:
                raise RuntimeError("backend pg needs OTPD_TEST_PG_HOST")
            self.schema = "t_" + secrets.token_hex(6)
            self.env.update({"PG_HOST": pg["host"], "PG_PORT": str(pg["port"]),
                             "PG_DATABASE": pg["database"], "PG_USER": pg["user"],
                             "PG_SCHEMA": self.schema})
            if pg.get("password"):
                self.env["PG_PASSWORD"] = pg["password"]
            if pg_sql(pg, f'CREATE SCHEMA "{self.schema}"') is None:
                # no psql here: let otpd create the schema itself at start
                self.env["PG_REAL_HOST"] = pg["host"]
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.port = None
        self.proc = None
        self.auth = None  # (user, password) sent by request() when the call gives none
        self.runs = []
        self.exit_codes = []

    # -- life cycle --

    @property
    def tls(self):
        """The certificate file when this instance serves HTTPS (OTPD_TLS_CERT), else None."""
        return self.env.get("OTPD_TLS_CERT") or None

    @property
    def base(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=START_TIMEOUT, env=None):
        """Start (or start again, on the same data dir and schema, preferably the same
        port) and wait until GET /health answers 200. `env` updates self.env first."""
        assert not self.running(), "already running"
        if env:
            self.env.update({k: str(v) for k, v in env.items()})
        for attempt in range(5):
            if self.port is None or attempt > 0:
                self.port = free_port()
            e = base_env()
            e.update(self.env)
            e["OTPD_LISTEN"] = f"127.0.0.1:{self.port}"
            log = self.workdir / f"stderr-{len(self.runs)}.log"
            self.runs.append(log)
            with open(log, "wb") as errf, open(self.workdir / "stdout.log", "ab") as outf:
                self.proc = subprocess.Popen([str(require_bin())], env=e, stdout=outf,
                                             stderr=errf, cwd=str(self.workdir))
            if self._wait_healthy(timeout):
                return self
            rc = self.proc.poll()
            text = log.read_text(errors="replace")
            if rc is not None and "cannot listen" in text:
                self.exit_codes.append(rc)
                continue  # someone took the port between our probe and otpd's bind
            if rc is None:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(
                f"otpd did not become healthy (exit {rc}) with env {self.env}:\n{text}")
        raise AssertionError("otpd could not find a free port in 5 tries")

    def _wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(self.url("/health"), timeout=2, verify=self.tls or True)
                if r.status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.02)
        return False

    def stop(self, timeout=STOP_TIMEOUT, check=True):
        """SIGTERM and wait. With check: exit code 0 and no sanitizer report. Returns the
        exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"otpd did not exit within {timeout}s of SIGTERM:\n"
                                     + self.log_tail())
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        self.proc = None
        if check:
            self.assert_no_sanitizer_report()
            assert rc == 0, f"otpd exited with {rc} after SIGTERM:\n" + self.log_tail()
        return rc

    def kill(self):
        """SIGKILL (no chance to clean up) and wait."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.exit_codes.append(self.proc.returncode)
        self.proc = None

    def restart(self, env=None, kill=False):
        """Stop (SIGTERM and a clean exit, or SIGKILL with kill=True) and start again on
        the same data directory (and schema); env updates the environment."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(env=env)

    def drop_schema(self):
        if self.backend == "pg" and self.schema and self.pg is not None:
            try:
                pg_sql(self.pg, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            except subprocess.CalledProcessError:
                pass

    # -- logs --

    def log_text(self):
        """Everything otpd wrote on stderr, over all its starts."""
        return "".join(p.read_text(errors="replace") for p in self.runs if p.exists())

    def log_bytes(self):
        return b"".join(p.read_bytes() for p in self.runs if p.exists())

    def log_lines(self):
        return self.log_text().splitlines()

    def log_records(self):
        """Every stderr line parsed as logfmt (dicts; non-logfmt lines give {})."""
        return [parse_logfmt(l) for l in self.log_lines()]

    def log_tail(self, n=60):
        return "\n".join(self.log_lines()[-n:])

    def wait_log(self, pred, timeout=30.0):
        """Poll the log until a record satisfies pred (a callable on the parsed dict, or a
        regex searched in the raw line); return that record (or re.Match)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if callable(pred):
                    rec = parse_logfmt(line)
                    if pred(rec):
                        return rec
                else:
                    m = re.search(pred, line)
                    if m:
                        return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matched within {timeout}s:\n"
                                     + self.log_tail())
            time.sleep(0.05)

    def assert_no_sanitizer_report(self):
        text = self.log_text()
        found = sanitizer_report(text)
        assert found is None, f"sanitizer report ({found}) in otpd's stderr:\n{text[-20000:]}"

    # -- HTTP --

    def request(self, method, path, body=None, **kw):
        """requests.request with a timeout; `body` (any JSON value) is sent as JSON
        (json.dumps) in the body, whatever the method (the seed docs send GET with a JSON
        body). Other keywords go to requests (params=, data=, headers=, auth=...); without
        auth= (or an Authorization header), self.auth is used when set."""
        kw.setdefault("timeout", HTTP_TIMEOUT)
        if self.tls:
            kw.setdefault("verify", self.tls)  # the test's own self-signed certificate
        if self.auth is not None and "auth" not in kw and "Authorization" not in (
                kw.get("headers") or {}):
            kw["auth"] = self.auth
        if body is not None:
            kw["data"] = json.dumps(body)
            headers = dict(kw.get("headers") or {})
            headers.setdefault("Content-Type", "application/json")
            kw["headers"] = headers
        return requests.request(method, self.url(path), **kw)

    def get(self, path, body=None, **kw):
        return self.request("GET", path, body, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def send(self, channel, target, code, lifetime=300, **extra):
        """POST /<channel> with a complete body; returns the response."""
        return self.post("/" + channel, send_body(channel, target, code, lifetime, **extra))

    def send_ok(self, channel, target, code, lifetime=300, **extra):
        """As send(), asserting 200 {"status":true}."""
        r = self.send(channel, target, code, lifetime, **extra)
        assert_ok(r)
        return r

    def check(self, channel, target, code, **kw):
        """GET /<channel>/check with a JSON body (seed style); asserts HTTP 200 and a
        {"status": bool} body, returns the bool."""
        r = self.get(f"/{channel}/check", {TARGET_FIELD[channel]: target, "password": code},
                     **kw)
        body = assert_json(r, 200)
        assert set(body) == {"status"} and isinstance(body["status"], bool), r.text
        return body["status"]

    # -- the native dialect (instances started with NATIVE_ENV) --

    def admin(self, method, path, body=None, token=None, **kw):
        """A request to /admin/* with OTPD_ADMIN_TOKEN (or `token`) as Bearer."""
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("Authorization", "Bearer " + (token or self.env["OTPD_ADMIN_TOKEN"]))
        return self.request(method, path, body, headers=headers, **kw)

    def create_app(self, settings=None, name=None):
        """POST /admin/apps (asserting 201); returns the app object."""
        body = {"name": name or "app-" + secrets.token_hex(4)}
        if settings is not None:
            body["settings"] = settings
        r = self.admin("POST", "/admin/apps", body)
        app = assert_json(r, 201)
        assert app["id"].startswith("app_"), r.text
        return app

    def create_key(self, app_id=None, admin=False, name="test"):
        """POST /admin/keys for app_id (or an admin key), asserting 201; returns the key object
        with its secret and token."""
        body = {"name": name}
        if admin:
            body["admin"] = True
        else:
            body["app_id"] = app_id
        r = self.admin("POST", "/admin/keys", body)
        key = assert_json(r, 201)
        assert key["secret"] and key["token"] == key["id"] + "." + key["secret"], r.text
        return key

    def new_app(self, settings=None, name=None):
        """An App (app + key) made over /admin."""
        app = self.create_app(settings, name)
        return App(self, app, self.create_key(app["id"]))

    def deliveries(self, target=None, channel=None):
        """The log provider's deliveries (msg=deliver records, needs OTPD_LOG_CODES=true), in
        order; only those to `target` (matched by its masked form) / on `channel` when given."""
        want = mask_target(target) if target is not None else None
        out = []
        for rec in self.log_records():
            if rec.get("msg") != "deliver":
                continue
            if want is not None and rec.get("target") != want:
                continue
            if channel is not None and rec.get("channel") != channel:
                continue
            out.append(rec)
        return out

    def wait_deliveries(self, target, n, timeout=30.0, channel=None):
        """Poll until `target` has at least n deliveries; returns them (all of them)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.deliveries(target, channel)
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} deliveries to {mask_target(target)} within "
                                     f"{timeout}s, wanted {n}:\n" + self.log_tail())
            time.sleep(0.02)

    def delivery_of(self, verification_id, timeout=30.0):
        """The first delivery of a verification: its "code stored" log line names the job,
        the log provider's deliver line of that job holds the code (rec["code"])."""
        stored = self.wait_log(lambda r: r.get("msg") == "code stored"
                               and r.get("verification") == verification_id, timeout)
        job = stored["job"]
        return self.wait_log(lambda r: r.get("msg") == "deliver" and r.get("job") == job, timeout)

    def code_of(self, verification_id, timeout=30.0):
        """The code the server made (or took) for a verification, from its first delivery."""
        return self.delivery_of(verification_id, timeout)["code"]


# ---- the native dialect: apps, keys and /otp/* ------------------------------------------------

# OTPD_ADMIN_TOKEN of instances started with NATIVE_ENV (at least 32 characters).
ADMIN_TOKEN = "admin-" + secrets.token_hex(20)
# What the native tests run with: the admin token (to make apps and keys over /admin) and
# the log provider showing codes (to learn the code the server made from its deliveries).
NATIVE_ENV = {"OTPD_ADMIN_TOKEN": ADMIN_TOKEN, "OTPD_LOG_CODES": "true"}


def mask_target(target):
    """The target as otpd's log lines show it (src/log.c log_mask_target)."""
    target = str(target)
    at = target.find("@")
    if at > 0:
        return target[0] + "***" + target[at:]
    if len(target) < 9:
        return "***"
    return target[:4] + "***" + target[-4:]


def unique_native_email():
    """An email whose masked form (first letter + domain) is unique too."""
    return f"u{secrets.token_hex(3)}@d{secrets.token_hex(6)}.example.com"


def assert_native_error(resp, status, error, field=None):
    """A native/admin error answer: HTTP status, JSON, exactly the keys error, message,
    field (+ retry_after) in that order, `error` the reason, `field` as given (None: not
    checked; False: must be JSON null). Returns the body."""
    body = assert_json(resp, status)
    assert keys(resp) in (["error", "message", "field"],
                          ["error", "message", "field", "retry_after"]), resp.text
    assert body["error"] == error, resp.text
    assert isinstance(body["message"], str) and body["message"], resp.text
    if field is False:
        assert body["field"] is None, resp.text
    elif field is not None:
        assert body["field"] == field, resp.text
    return body


class App:
    """An app made over /admin/apps and one API key of it (secret and token as /admin/keys
    answered them once). Requests carry the key in one of its three forms:
    auth="x-api" (X-API-Key + X-API-Secret, the default), "basic" (key:secret) or "bearer"
    (key.secret); auth=None sends none."""

    def __init__(self, otpd, app, key):
        self.otpd = otpd
        self.app = app
        self.id = app["id"]
        self.settings = app["settings"]
        self.key = key
        self.key_id = key["id"]
        self.secret = key["secret"]
        self.token = key["token"]

    def auth_headers(self, auth="x-api"):
        if auth is None:
            return {}
        if auth == "x-api":
            return {"X-API-Key": self.key_id, "X-API-Secret": self.secret}
        if auth == "basic":
            raw = f"{self.key_id}:{self.secret}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if auth == "bearer":
            return {"Authorization": "Bearer " + self.token}
        raise ValueError(auth)

    def request(self, method, path, body=None, auth="x-api", headers=None, **kw):
        h = self.auth_headers(auth)
        h.update(headers or {})
        return self.otpd.request(method, path, body, headers=h, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def get(self, path, params=None, **kw):
        return self.request("GET", path, None, params=params, **kw)

    # -- the endpoints --

    def send(self, recipient, **fields):
        body = {"recipient": recipient}
        body.update(fields)
        return self.post("/otp/send", body)

    def send_ok(self, recipient, **fields):
        """POST /otp/send, asserting 200 and a pending verification; returns the body."""
        r = self.send(recipient, **fields)
        body = assert_json(r, 200)
        assert body["status"] == "pending" and body["verification_id"].startswith("otp_"), r.text
        assert body["appid"] == self.id, r.text
        return body

    def verify(self, verification_id=None, code=None, **fields):
        body = dict(fields)
        if verification_id is not None:
            body["verification_id"] = verification_id
        if code is not None:
            body["otp_code"] = code
        return self.post("/otp/verify", body)

    def verify_ok(self, verification_id, code, **fields):
        """POST /otp/verify answered 200; returns the body."""
        return assert_json(self.verify(verification_id, code, **fields), 200)

    def resend(self, verification_id, **fields):
        return self.post("/otp/resend", dict(fields, verification_id=verification_id))

    def cancel(self, verification_id):
        return self.post("/otp/cancel", {"verification_id": verification_id})

    def status(self, verification_id):
        return self.get("/otp/status", {"verification_id": verification_id})

    def status_ok(self, verification_id):
        return assert_json(self.status(verification_id), 200)
