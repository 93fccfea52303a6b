"""Running otpd like a daemon operators trust (issue 12): signals as nginx and pgbouncer
take them, the command line, --check-config finding what would stop serving, the
health subcommand, the access log and its switch, logfmt start errors, /metrics'
process and refusal families, and provider connections kept alive."""

import concurrent.futures
import os
import re
import signal
import ssl
import socket
import time

import pytest
import requests

from e2elib import fakes, wait_until
from otpdlib import assert_ok, free_port, parse_logfmt, run_otpd
from test_tls import OPENSSL, make_cert


def problems(cp):
    """The `configuration problem` lines of a run: [(var, problem)]."""
    out = []
    for line in cp.stderr.splitlines():
        rec = parse_logfmt(line)
        if rec.get("msg") == "configuration problem" and rec.get("level") == "error":
            out.append((rec.get("var"), rec.get("problem", "")))
    return out


def assert_all_logfmt(text):
    for line in text.splitlines():
        rec = parse_logfmt(line)
        assert rec.get("ts") and rec.get("level") and rec.get("msg"), f"not logfmt: {line!r}"


# ---- the command line ------------------------------------------------------------------

def test_unknown_arguments_are_refused_and_migrate_does_not_run(tmp_path):
    data = tmp_path / "data"
    cp = run_otpd(["migrate", "--dry-run"], {"OTPD_DATA_DIR": data})
    assert cp.returncode == 2, cp
    assert not data.exists(), "migrate --dry-run must not migrate"
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    rec = parse_logfmt(lines[0])
    assert rec["level"] == "fatal" and rec["argument"] == "--dry-run", rec
    assert "--help" in rec["usage"]
    for args in (["--no-such-flag"], ["serve", "extra"], ["--check-config", "x"],
                 ["health", "--verbose"], ["-t", "-t"]):
        cp = run_otpd(args, {"OTPD_DATA_DIR": data})
        assert cp.returncode == 2, (args, cp)
        assert len(cp.stderr.strip().splitlines()) == 1, (args, cp.stderr)
        assert_all_logfmt(cp.stderr)
    assert not data.exists()


def test_short_forms():
    v = run_otpd(["-V"])
    assert v.returncode == 0 and v.stdout == run_otpd(["--version"]).stdout
    assert re.fullmatch(r"otpd \S+\n", v.stdout), v.stdout
    t = run_otpd(["-t"])
    assert t.returncode == 0 and "OTPD_LISTEN=" in t.stdout


def test_fatal_start_errors_are_logfmt(tmp_path):
    cp = run_otpd([], {"OTPD_DATA_DIR": tmp_path / "d", "OTPD_LISTEN": "nope",
                       "OTPD_MAX_CHECK_ATTEMPTS": "x"})
    assert cp.returncode == 2
    assert_all_logfmt(cp.stderr)
    recs = [parse_logfmt(l) for l in cp.stderr.splitlines()]
    assert {r.get("var") for r in recs} >= {"OTPD_LISTEN", "OTPD_MAX_CHECK_ATTEMPTS"}
    assert recs[-1]["level"] == "fatal", recs
    # a port in use: level=fatal too, exit 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cp = run_otpd([], {"OTPD_DATA_DIR": tmp_path / "d2", "OTPD_PROVIDER": "log",
                           "OTPD_LISTEN": f"127.0.0.1:{port}"})
    assert cp.returncode == 1, cp
    assert_all_logfmt(cp.stderr)
    assert any(parse_logfmt(l)["level"] == "fatal" and "cannot listen" in l
               for l in cp.stderr.splitlines()), cp.stderr


# ---- --check-config ----------------------------------------------------------------------

def test_check_config_typo_with_suggestion(tmp_path):
    cp = run_otpd(["--check-config"], {"OTPD_LISTN": "0.0.0.0:80", "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2, cp
    assert ("OTPD_LISTN", "unknown variable (did you mean OTPD_LISTEN?)") in problems(cp)
    cp = run_otpd(["--check-config"], {"PG_HOTS": "db", "OTPD_DATA_DIR": tmp_path})
    assert ("PG_HOTS", "unknown variable (did you mean PG_HOST?)") in problems(cp)
    # far from every name: no suggestion, still a problem
    cp = run_otpd(["--check-config"], {"OTPD_SOMETHING_ELSE_ENTIRELY": "1",
                                       "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2 and problems(cp)[0][0] == "OTPD_SOMETHING_ELSE_ENTIRELY"
    assert "did you mean" not in problems(cp)[0][1]
    # a secret's _FILE spelling is a known name
    key = tmp_path / "k"
    key.write_text("ab" * 32 + "\n")
    cp = run_otpd(["--check-config"], {"OTPD_SECRET_KEY_FILE": key, "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 0, cp.stderr
    assert "OTPD_SECRET_KEY=(set)" in cp.stdout and "ab" * 32 not in cp.stdout + cp.stderr


@pytest.mark.parametrize("var,value", [
    ("OTP_QUEUE_URL", "queue:8080"),          # no scheme
    ("OTP_QUEUE_URL", "ftp://queue"),         # a scheme otpd cannot post to
    ("OTPD_WEBHOOK_URL", "http://"),          # no host
    ("OTPD_SMTP_URL", "https://mail.example.com"),
    ("OTPD_TELEGRAM_API_URL", "http://exa mple.com"),
])
def test_check_config_bad_url(tmp_path, var, value):
    cp = run_otpd(["--check-config"], {var: value, "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2, cp
    assert [v for v, _ in problems(cp)] == [var], cp.stderr


def test_check_config_url_with_credentials_is_not_echoed(tmp_path):
    cp = run_otpd(["--check-config"], {"OTPD_WEBHOOK_URL": "gopher://u:s3cr3t-pw@x",
                                       "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2 and "s3cr3t-pw" not in cp.stderr


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl (scripts/deps.sh)")
def test_check_config_mismatched_tls_pair(tmp_path):
    cert, _ = make_cert(tmp_path)
    _, other_key = make_cert(tmp_path, "other")
    cp = run_otpd(["--check-config"], {"OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": other_key,
                                       "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2, cp
    assert problems(cp) == [("OTPD_TLS_KEY", "OTPD_TLS_KEY is not the key of OTPD_TLS_CERT")]
    assert "BEGIN" not in cp.stderr + cp.stdout


def test_check_config_unwritable_data_dir(tmp_path):
    # root may write anywhere a mode allows nothing: a path under a regular file is
    # unwritable for everyone
    f = tmp_path / "file"
    f.write_text("x")
    cp = run_otpd(["--check-config"], {"OTPD_DATA_DIR": f / "data"})
    assert cp.returncode == 2, cp
    assert [v for v, _ in problems(cp)] == ["OTPD_DATA_DIR"], cp.stderr
    # the kernel's own read-only directory
    cp = run_otpd(["--check-config"], {"OTPD_DATA_DIR": "/proc/otpd-data"})
    assert cp.returncode == 2 and problems(cp)[0][0] == "OTPD_DATA_DIR", cp.stderr
    # a directory that does not exist yet but can be made: fine, and not made
    cp = run_otpd(["--check-config"], {"OTPD_DATA_DIR": tmp_path / "new" / "data"})
    assert cp.returncode == 0, cp.stderr
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == [f], "the probe left a file behind"


def test_check_config_provider_channel_mismatch(tmp_path):
    twilio = {"OTPD_TWILIO_ACCOUNT_SID": "AC1", "OTPD_TWILIO_AUTH_TOKEN": "t",
              "OTPD_TWILIO_FROM": "+15550001111", "OTPD_DATA_DIR": tmp_path}
    # every email job used to go dead under OTPD_PROVIDER=twilio
    cp = run_otpd(["--check-config"], dict(twilio, OTPD_PROVIDER="twilio"))
    assert cp.returncode == 2, cp
    found = dict(problems(cp))
    assert "OTPD_PROVIDER" in found and "cannot deliver email" in cp.stderr, cp.stderr
    assert "OTPD_EMAIL_PROVIDER" in cp.stderr  # says what to set
    # a per-channel choice that cannot deliver its channel
    cp = run_otpd(["--check-config"], dict(twilio, OTPD_EMAIL_PROVIDER="twilio"))
    assert cp.returncode == 2 and [v for v, _ in problems(cp)] == ["OTPD_EMAIL_PROVIDER"]
    # giving every channel twilio cannot serve a provider makes it valid
    ok = dict(twilio, OTPD_PROVIDER="twilio", OTPD_EMAIL_PROVIDER="log",
              OTPD_TELEGRAM_PROVIDER="log", OTPD_WHATSAPP_PROVIDER="log")
    assert run_otpd(["--check-config"], ok).returncode == 0
    # and a start with the mismatch stops with exit 2 before it writes
    data = tmp_path / "serve-data"
    cp = run_otpd([], dict(twilio, OTPD_PROVIDER="twilio", OTPD_DATA_DIR=data,
                           OTPD_LISTEN=f"127.0.0.1:{free_port()}"))
    assert cp.returncode == 2 and "cannot deliver email" in cp.stderr, cp.stderr
    assert not data.exists()


def test_secrets_from_files_and_credentials(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "OTPD_SECRET_KEY").write_text("cd" * 32)
    (creds / "HTTP_AUTH_PASSWORD").write_text("pw-from-cred\n")
    env = {"CREDENTIALS_DIRECTORY": creds, "HTTP_AUTH_USERNAME": "ops",
           "OTPD_DATA_DIR": tmp_path / "d"}
    cp = run_otpd(["--check-config"], env)
    assert cp.returncode == 0, cp.stderr
    assert "OTPD_SECRET_KEY=(set)" in cp.stdout and "HTTP_AUTH_PASSWORD=(set)" in cp.stdout
    assert "pw-from-cred" not in cp.stdout + cp.stderr
    # a variable and its _FILE together are ambiguous
    f = tmp_path / "pw"
    f.write_text("x")
    cp = run_otpd(["--check-config"], {"PG_PASSWORD": "a", "PG_PASSWORD_FILE": f,
                                       "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2 and "PG_PASSWORD" in cp.stderr
    cp = run_otpd(["--check-config"], {"PG_PASSWORD_FILE": tmp_path / "missing",
                                       "OTPD_DATA_DIR": tmp_path})
    assert cp.returncode == 2 and "PG_PASSWORD" in cp.stderr


def test_credentials_are_used_by_the_server(otpd_factory, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "HTTP_AUTH_PASSWORD").write_text("pw-from-cred\n")
    o = otpd_factory(env={"CREDENTIALS_DIRECTORY": creds, "HTTP_AUTH_USERNAME": "ops"})
    assert o.get("/admin/outbox").status_code == 401
    assert o.get("/admin/outbox", auth=("ops", "pw-from-cred")).status_code == 200


# ---- signals -------------------------------------------------------------------------------

def test_unused_signals_are_ignored_and_logged(otpd):
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        otpd.proc.send_signal(sig)
        name = signal.Signals(sig).name
        otpd.wait_log(lambda r, n=name: r.get("msg", "").startswith("signal ignored")
                      and r.get("signal") == n)
    assert otpd.running()
    assert otpd.get("/health").status_code == 200
    # SIGHUP without TLS: a reload with nothing to do, still serving
    otpd.proc.send_signal(signal.SIGHUP)
    otpd.wait_log(lambda r: r.get("msg", "").startswith("reload:"))
    assert otpd.get("/health").status_code == 200
    assert otpd.stop() == 0


def test_sigquit_stops_gracefully(otpd):
    otpd.proc.send_signal(signal.SIGQUIT)
    assert otpd.proc.wait(timeout=60) == 0
    otpd.proc = None
    assert any(r.get("signal") == "SIGQUIT" for r in otpd.log_records())


def _fingerprint(port, cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl (scripts/deps.sh)")
def test_sighup_swaps_the_certificate_under_load_with_no_failed_request(otpd_factory,
                                                                        tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    c1, k1 = make_cert(first)
    c2, k2 = make_cert(second)
    cert, key = live / "cert.pem", live / "key.pem"
    cert.write_bytes(c1.read_bytes())
    key.write_bytes(k1.read_bytes())
    key.chmod(0o600)
    bundle = tmp_path / "both.pem"   # the clients trust either certificate
    bundle.write_bytes(c1.read_bytes() + c2.read_bytes())
    o = otpd_factory(env={"OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": key})
    der1 = _fingerprint(o.port, bundle)

    stop = time.monotonic() + 3.0
    failures, done = [], [0]

    def hammer():
        # a new connection per request, so every handshake shows the pair in force
        while time.monotonic() < stop:
            try:
                r = requests.get(o.url("/health"), timeout=30, verify=str(bundle),
                                 headers={"Connection": "close"})
                if r.status_code != 200:
                    failures.append(r.status_code)
                done[0] += 1
            except requests.RequestException as e:
                failures.append(repr(e))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(hammer) for _ in range(4)]
        time.sleep(0.7)
        cert.write_bytes(c2.read_bytes())
        key.write_bytes(k2.read_bytes())
        o.proc.send_signal(signal.SIGHUP)
        o.wait_log(lambda r: r.get("msg") == "reload: TLS certificate and key reloaded")
        for f in futs:
            f.result()
    assert not failures, failures[:5]
    assert done[0] > 20, done
    der2 = _fingerprint(o.port, bundle)
    assert der2 != der1, "new connections still get the old certificate"

    # a bad pair is refused, said so in the log, and the old one keeps serving
    _, k3 = make_cert(tmp_path, "third")
    key.write_bytes(k3.read_bytes())
    o.proc.send_signal(signal.SIGHUP)
    rec = o.wait_log(lambda r: r.get("msg", "").startswith("reload: TLS pair refused"))
    assert rec["level"] == "error" and "OTPD_TLS_KEY is not the key" in rec["error"]
    assert _fingerprint(o.port, bundle) == der2
    assert requests.get(o.url("/health"), timeout=10, verify=str(bundle)).status_code == 200
    assert "BEGIN" not in o.log_text()


# ---- otpd health ---------------------------------------------------------------------------

def test_health_subcommand(otpd, tmp_path):
    cp = run_otpd(["health"], {"OTPD_LISTEN": f"127.0.0.1:{otpd.port}"})
    assert cp.returncode == 0, cp.stderr
    # a wildcard listen address is asked on the loopback
    cp = run_otpd(["health"], {"OTPD_LISTEN": f"0.0.0.0:{otpd.port}"})
    assert cp.returncode == 0, cp.stderr
    cp = run_otpd(["health"], {"OTPD_LISTEN": f"127.0.0.1:{free_port()}"})
    assert cp.returncode == 1
    assert_all_logfmt(cp.stderr)


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl (scripts/deps.sh)")
def test_health_subcommand_over_tls(otpd_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    key.chmod(0o600)
    o = otpd_factory(env={"OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": key})
    env = {"OTPD_LISTEN": f"0.0.0.0:{o.port}", "OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": key}
    assert run_otpd(["health"], env).returncode == 0
    # plain HTTP against the TLS port is not healthy
    assert run_otpd(["health"], {"OTPD_LISTEN": f"127.0.0.1:{o.port}"}).returncode == 1
    # nor is a server whose certificate is not the configured one
    other, other_key = make_cert(tmp_path, "other")
    assert run_otpd(["health"], dict(env, OTPD_TLS_CERT=other,
                                     OTPD_TLS_KEY=other_key)).returncode == 1


# ---- the access log ------------------------------------------------------------------------

def test_access_log_fields_and_its_own_switch(otpd_factory):
    o = otpd_factory(env={"OTPD_LOG_LEVEL": "warn"})
    r = o.post("/sms", {"phone": "77011234567"}, headers={"User-Agent": "probe/1.0"})
    assert r.status_code == 400
    r = o.post("/sms", {"phone": "x", "password": "1", "message": "m", "lifetime": 5},
               headers={"User-Agent": "probe/1.0"})
    assert r.status_code == 400
    recs = [x for x in o.log_records() if x.get("msg") == "request"]
    assert len(recs) >= 3, o.log_tail()  # /health polls, and the two sends
    bad = [x for x in recs if x.get("path") == "/sms"]
    assert [x["status"] for x in bad] == ["400", "400"]
    assert bad[0]["code"] == "missing_parameter" and bad[1]["code"] == "invalid_parameter", bad
    for x in bad:
        assert x["client"] == "127.0.0.1" and x["method"] == "POST" and x["ua"] == "probe/1.0"
        assert int(x["bytes"]) > 10 and float(x["ms"]) >= 0 and x["level"] == "info"
    o.stop()
    o.start(env={"OTPD_ACCESS_LOG": "false", "OTPD_LOG_LEVEL": "info"})
    before = len([x for x in o.log_records() if x.get("msg") == "request"])
    assert o.get("/health").status_code == 200
    assert len([x for x in o.log_records() if x.get("msg") == "request"]) == before


def test_log_lines_carry_journal_priorities_when_stderr_is_the_journal(tmp_path):
    import subprocess
    from otpdlib import base_env, require_bin
    log = tmp_path / "err.log"
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        env = base_env()
        env.update({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "OTPD_LISTEN": "nope"})
        subprocess.run([str(require_bin()), "-t"], env=env, stderr=f, timeout=60)
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>ts=", l) for l in lines), lines
    assert lines[0].startswith("<3>"), lines  # an error
    # another stream (a redirect in a child) gets no prefixes
    with open(log, "wb") as f:
        env["JOURNAL_STREAM"] = "1:2"
        subprocess.run([str(require_bin()), "-t"], env=env, stderr=f, timeout=60)
    assert log.read_text().startswith("ts=")


# ---- metrics -------------------------------------------------------------------------------

def test_process_and_refusal_metrics(otpd):
    assert otpd.post("/sms", {"phone": "77011234567"}).status_code == 400
    assert otpd.post("/sms", {"phone": "1", "password": "1", "message": "m",
                              "lifetime": 5}).status_code == 400
    text = otpd.get("/metrics").text
    vals = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            vals[name] = float(v)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        assert name in vals, name
    assert vals["process_resident_memory_bytes"] > 1e6
    assert 3 < vals["process_open_fds"] < 10000
    assert abs(vals["process_start_time_seconds"] - time.time()) < 600
    assert vals['otpd_http_refusals_total{method="POST",route="/sms",reason="missing_parameter"}'] == 1
    assert vals['otpd_http_refusals_total{method="POST",route="/sms",reason="invalid_parameter"}'] == 1
    assert 'otpd_provider_deliveries_total{provider="log",outcome="sent"}' in vals


# ---- providers: connections kept alive -----------------------------------------------------

def test_deliveries_reuse_the_providers_connection(otpd_factory, uniq):
    with fakes.FakeHTTP() as q:
        # one worker: every delivery goes through the same handle, one after the other
        o = otpd_factory(env={"OTPD_PROVIDER": "webhook", "OTPD_WEBHOOK_URL": q.url + "/hook",
                              "OTPD_WEBHOOK_SECRET": "s", "OTPD_OUTBOX_WORKERS": 1})
        n = 12
        for _ in range(n):
            assert_ok(o.send("sms", uniq.phone(), uniq.code()))
        q.wait_for(n, timeout=60)
        wait_until(lambda: sum(1 for r in o.log_records() if r.get("state") == "sent") == n,
                   what="all deliveries marked sent")
        assert q.connections == 1, f"{q.connections} connections for {n} deliveries"
