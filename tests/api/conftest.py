"""Black-box tests of otpd over real HTTP: `/usr/bin/python3 -m pytest tests/api`.

The binary under test is $OTPD_BIN (default build/otpd, else build/src/otpd, relative to
the repository root); the suite runs unchanged against a normal and an ASan/UBSan build.
Only Debian's python3-pytest and python3-requests are needed.

Backends: when OTPD_TEST_PG_HOST (with OTPD_TEST_PG_PORT, OTPD_TEST_PG_USER,
OTPD_TEST_PG_DATABASE, optional OTPD_TEST_PG_PASSWORD) is set, e.g. by
    eval "$(scripts/pg-test-server.sh env /tmp/pgt)"
every test that uses `backend` (directly or through the otpd fixtures) runs twice, ids
[sqlite] and [pg]; each pg instance gets a fresh schema t_<random> on that server (made
with psql and dropped afterwards), so tests never see each other's data. Otherwise only
[sqlite].

Fixtures
--------
backend              "sqlite" or "pg" (module scope, parametrized as above).
otpd_factory         function scope. otpd_factory(env=None, backend=None, start=True)
                     -> Otpd: a new otpd on a free 127.0.0.1 port with a fresh temporary
                     OTPD_DATA_DIR, OTPD_PROVIDER=log, plus `env` (str() of each value).
                     Started and healthy (GET /health polled) unless start=False. At
                     teardown every instance still running gets SIGTERM and must exit 0
                     with no sanitizer report in its stderr ("ERROR: AddressSanitizer",
                     "runtime error:", "LeakSanitizer"); instances killed by the test are
                     still scanned for sanitizer reports.
otpd_module_factory  the same with module scope (for a shared instance with custom env).
otpd                 a started default instance (function scope).
shared_otpd          a started default instance shared by one module: only for tests that
                     do not depend on state (use unique targets: uniq.phone() etc.).
uniq                 fresh values: uniq.phone(), .email(), .chat_id(), .code(digits=6),
                     .target(channel).
native_otpd          a started instance with NATIVE_ENV (OTPD_ADMIN_TOKEN, OTPD_LOG_CODES)
                     shared by one module; tests isolate themselves by making their own
                     app (native_otpd.new_app(settings)) and unique recipients.

Otpd (tests/api/otpdlib.py)
---------------------------
  .base / .url(path) / .port / .data_dir / .env / .backend / .schema / .tls (HTTPS cert)
  .auth = (user, password)   Basic auth sent by every request that gives none
  .request(method, path, body=None, **requests_kwargs)  body sent as JSON whatever the
      method (seed style GET with a JSON body); params=, data=, headers=, auth= pass on.
  .get(path, body=None, **kw), .post(path, body=None, **kw)
  .send(channel, target, code, lifetime=300, **extra) -> Response   (complete body)
  .send_ok(...)        asserts 200 {"status":true}
  .check(channel, target, code) -> bool   (GET /<ch>/check with a JSON body; asserts
      200 and {"status": bool})
  .stop(check=True) -> exit code, .kill() (SIGKILL), .start(env=None),
  .restart(env=None, kill=False)   same data dir / schema / port when possible
  .log_text(), .log_bytes(), .log_lines(), .log_records() (logfmt dicts),
  .wait_log(pred_or_regex, timeout=30), .log_tail()

  Native dialect (instances started with NATIVE_ENV):
  .admin(method, path, body=None, token=None)   /admin/* with OTPD_ADMIN_TOKEN as Bearer
  .create_app(settings=None, name=None) -> app dict (201), .create_key(app_id, admin=False)
  .new_app(settings=None) -> App: an app and a key; App.send/send_ok/verify/verify_ok/
      resend/cancel/status/status_ok, App.request(method, path, body, auth="x-api"|"basic"|
      "bearer"|None), App.id/.key_id/.secret/.token
  .deliveries(target=None, channel=None)   the log provider's deliver records (with code)
  .wait_deliveries(target, n), .delivery_of(verification_id), .code_of(verification_id)

Module helpers (from otpdlib import ...):
  assert_ok(r)                  200 {"status":true}
  assert_json(r, status)        status + application/json; returns the body
  assert_error(r, status, field=None, status_code=None)   status false, a message (naming
                                field), keys in the order status, status_code, message
  assert_invalid(r, field)      400 naming field; status_code, if any, invalid_parameter
  assert_missing(r, field)      400 exactly {"status":false,"message":"\"f\" parameter must be set"}
  pairs(r) / keys(r)            the JSON object as ordered (key, value) pairs / its keys
  send_body(channel, target, code, lifetime=300, **extra)   a complete send body
  run_otpd(args, env)           one-shot run (e.g. --check-config) in a clean environment
  base_env()                    the caller's environment minus every variable otpd reads
  assert_native_error(r, status, error, field=None)   {"error","message","field"} answer
  mask_target(t), unique_native_email(), NATIVE_ENV, ADMIN_TOKEN
  parse_logfmt(line), free_port(), otpd_bin(), REPO, TARGET_FIELD,
  unique_phone/email/chat_id/code/target
  pg_settings(), pg_sql(pg, sql), pg_dump_schema(pg, schema)   the test PostgreSQL server

Timing: generous timeouts everywhere (START_TIMEOUT, STOP_TIMEOUT, HTTP_TIMEOUT in
otpdlib); poll, never sleep blindly, except where time itself is the subject (expiry).
"""

import pytest

import otpdlib
from otpdlib import NATIVE_ENV, Otpd, pg_settings

_PG = pg_settings()
BACKENDS = ["sqlite", "pg"] if _PG else ["sqlite"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


class _Launcher:
    def __init__(self, tmp_path_factory, default_backend, name):
        self.tmp_path_factory = tmp_path_factory
        self.default_backend = default_backend
        self.name = name
        self.instances = []

    def __call__(self, env=None, backend=None, start=True):
        workdir = self.tmp_path_factory.mktemp(self.name[:40] or "otpd")
        inst = Otpd(workdir, env=env, backend=backend or self.default_backend, pg=_PG)
        self.instances.append(inst)
        if start:
            inst.start()
        return inst

    def close(self):
        failures = []
        for inst in self.instances:
            try:
                if inst.proc is not None:
                    inst.stop(check=True)
                else:
                    inst.assert_no_sanitizer_report()
            except AssertionError as e:
                failures.append(str(e))
            finally:
                inst.drop_schema()
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)


def _safe_name(request):
    return "".join(c if c.isalnum() else "_" for c in request.node.name)


@pytest.fixture
def otpd_factory(request, backend, tmp_path_factory):
    launcher = _Launcher(tmp_path_factory, backend, _safe_name(request))
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def otpd_module_factory(request, backend, tmp_path_factory):
    launcher = _Launcher(tmp_path_factory, backend, _safe_name(request))
    yield launcher
    launcher.close()


@pytest.fixture
def otpd(otpd_factory):
    return otpd_factory()


@pytest.fixture(scope="module")
def shared_otpd(otpd_module_factory):
    return otpd_module_factory()


@pytest.fixture(scope="module")
def native_otpd(otpd_module_factory):
    return otpd_module_factory(env=NATIVE_ENV)


class _Uniq:
    phone = staticmethod(otpdlib.unique_phone)
    email = staticmethod(otpdlib.unique_email)
    chat_id = staticmethod(otpdlib.unique_chat_id)
    code = staticmethod(otpdlib.unique_code)
    target = staticmethod(otpdlib.unique_target)


@pytest.fixture(scope="session")
def uniq():
    return _Uniq()
