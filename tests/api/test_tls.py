"""HTTPS (README "TLS"): with OTPD_TLS_CERT and OTPD_TLS_KEY otpd serves the same API
over TLS 1.2/1.3 only, refuses plain HTTP on that port, and reports unusable files as
configuration errors (exit 2) before it starts anything."""

import shutil
import socket
import ssl
import subprocess
import warnings

import pytest
import requests

from otpdlib import assert_ok, free_port, run_otpd

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs openssl (scripts/deps.sh)")


def make_cert(dirpath, name="server"):
    """A fresh self-signed P-256 certificate for 127.0.0.1: (cert path, key path)."""
    cert, key = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_otpd(otpd_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    key.chmod(0o600)
    return otpd_factory(env={"OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": key})


def test_a_key_file_others_can_read_is_warned_about(otpd_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    key.chmod(0o644)
    o = otpd_factory(env={"OTPD_TLS_CERT": cert, "OTPD_TLS_KEY": key})
    rec = o.wait_log(lambda r: r.get("msg", "").startswith("TLS key file is readable"))
    assert rec["level"] == "warn" and rec["path"] == str(key)


def test_the_api_over_https(tls_otpd, uniq):
    assert tls_otpd.base.startswith("https://")
    assert "TLS key file is readable" not in tls_otpd.log_text()
    phone, code = uniq.phone(), uniq.code()
    assert_ok(tls_otpd.send("sms", phone, code))
    assert tls_otpd.check("sms", phone, code) is True
    assert tls_otpd.check("sms", phone, uniq.code()) is False
    # the log provider delivered it: the outbox works as over HTTP
    tls_otpd.wait_log(lambda r: r.get("msg") == "outbox delivery" and r.get("state") == "sent")


def test_plain_http_and_old_tls_are_refused(tls_otpd):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_otpd.port}/health", timeout=5)
    ctx = ssl.create_default_context(cafile=tls_otpd.tls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point here
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", tls_otpd.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(100)
    ctx13 = ssl.create_default_context(cafile=tls_otpd.tls)
    ctx13.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", tls_otpd.port), timeout=5) as raw:
        with ctx13.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.3"


def test_a_client_that_does_not_trust_the_certificate_gets_nothing(tls_otpd, tmp_path):
    other, _ = make_cert(tmp_path, "other")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_otpd.url("/health"), timeout=5, verify=str(other))


def test_unusable_tls_files_are_configuration_errors(tmp_path):
    cert, key = make_cert(tmp_path)
    data = tmp_path / "data"
    base = {"OTPD_DATA_DIR": data, "OTPD_PROVIDER": "log", "OTPD_LISTEN": "127.0.0.1:1"}

    r = run_otpd(["--check-config"], dict(base, OTPD_TLS_CERT=cert))
    assert r.returncode == 2 and "OTPD_TLS_CERT and OTPD_TLS_KEY must be set together" in r.stderr

    missing = tmp_path / "nope.pem"
    r = run_otpd(["--check-config"], dict(base, OTPD_TLS_CERT=cert, OTPD_TLS_KEY=missing))
    assert r.returncode == 2 and f"OTPD_TLS_KEY: cannot read {missing}" in r.stderr

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    r = run_otpd([], dict(base, OTPD_TLS_CERT=not_pem, OTPD_TLS_KEY=key))
    assert r.returncode == 2 and f"OTPD_TLS_CERT: {not_pem} is not a PEM file" in r.stderr
    assert not data.exists(), "a configuration error must stop otpd before it writes"

    empty = tmp_path / "empty.pem"
    empty.write_text("")
    r = run_otpd(["--check-config"], dict(base, OTPD_TLS_CERT=cert, OTPD_TLS_KEY=empty))
    assert r.returncode == 2 and "is empty" in r.stderr

    r = run_otpd(["--check-config"], dict(base, OTPD_TLS_CERT=cert, OTPD_TLS_KEY=key))
    assert r.returncode == 0, r.stderr
    assert str(key) in r.stdout  # a path is no secret; the key's contents are never printed
    assert "BEGIN" not in r.stdout + r.stderr


def test_a_key_that_is_not_the_certificates_stops_otpd(tmp_path):
    cert, _ = make_cert(tmp_path)
    _, other_key = make_cert(tmp_path, "other")
    r = run_otpd([], {"OTPD_DATA_DIR": tmp_path / "data", "OTPD_PROVIDER": "log",
                      "OTPD_LISTEN": f"127.0.0.1:{free_port()}", "OTPD_TLS_CERT": cert,
                      "OTPD_TLS_KEY": other_key}, timeout=30)
    # a configuration error (exit 2), found by GnuTLS before anything is created
    assert r.returncode == 2, r.stderr
    assert "OTPD_TLS_KEY is not the key of OTPD_TLS_CERT" in r.stderr
    assert not (tmp_path / "data").exists()
    assert "BEGIN" not in r.stderr
