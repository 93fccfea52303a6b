"""Self-test of the fakes: scripts answer in order, records are exact, SMTP speaks enough
of the protocol for smtplib and libcurl. Run: /usr/bin/python3 -m pytest -q tests/fakes"""

import json
import os
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fakes import FakeHTTP, FakeSMTP  # noqa: E402


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_script_in_order_then_last_repeats():
    script = [{"status": 500, "times": 2, "body": "Sent message 1"},
              {"status": 200, "json": {"ok": True}}]
    with FakeHTTP(script) as f:
        got = [post(f.url + "/msg", b"x") for _ in range(4)]
    assert got == [(500, b"Sent message 1")] * 2 + [(200, b'{"ok":true}')] * 2


def test_http_per_path_and_default():
    script = [{"path": "/a", "status": 201, "json": {"sid": "SM1"}},
              {"path_prefix": "/bot", "status": 429}]
    with FakeHTTP(script) as f:
        assert post(f.url + "/a?x=1", b"")[0] == 201
        assert post(f.url + "/bot1:2/sendMessage", b"")[0] == 429
        assert post(f.url + "/other", b"")[0] == 404
    with FakeHTTP() as f:
        assert post(f.url + "/task", b"{}") == (200, b'{"status":true}')


def test_http_records_exact_bytes(tmp_path):
    rec = tmp_path / "rec.jsonl"
    body = "{\"a\":\"é/\\n\"}".encode() + b"\xff"
    with FakeHTTP(record=str(rec)) as f:
        post(f.url + "/task?q=1", body, {"X-Auth-Token": "t"})
        r = f.wait_for(1)[0]
    assert r["body"] == body and r["path"] == "/task?q=1"
    assert r["header_map"]["x-auth-token"] == "t"
    line = json.loads(rec.read_text().splitlines()[0])
    assert bytes.fromhex(line["body_hex"]) == body
    assert line["body_text"] is None  # not UTF-8


def test_smtp_dialogue():
    replies = {"rcpt": ["550 5.1.1 unknown", "250 2.1.5 Ok"]}
    with FakeSMTP(starttls=True, auth="u:p", replies=replies) as f:
        s = smtplib.SMTP("127.0.0.1", f.port, timeout=5)
        s.ehlo("client.test")
        assert s.has_extn("starttls") and "PLAIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPResponseException):
            s.starttls()  # advertised, not available: 454
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("u", "wrong")
        s.login("u", "p")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@b.test", ["x@y.test"], b"Subject: 1\r\n\r\nx\r\n")
        s.sendmail("a@b.test", ["x@y.test"], b"Subject: 2\r\n\r\n.dot\r\n")
        s.noop()
        s.rset()
        s.quit()
        m = f.wait_for(1)[0]
    assert m["mail_from"] == "a@b.test" and m["rcpt_to"] == ["x@y.test"]
    assert m["auth"] == {"mech": "PLAIN", "username": "u", "password": "p"}
    assert m["starttls_requested"] is True
    assert m["data"] == b"Subject: 2\r\n\r\n.dot\r\n"  # dot-stuffing undone


def test_cli_port_file(tmp_path):
    pf, rec = tmp_path / "port", tmp_path / "rec"
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "fakes.py"),
                          "http", "--port-file", str(pf), "--record", str(rec),
                          "--script", '[{"status":503}]'], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not pf.exists():
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        port = int(pf.read_text())
        assert post("http://127.0.0.1:%d/x" % port, b"b")[0] == 503
        assert json.loads(rec.read_text())["body_hex"] == "62"
    finally:
        p.terminate()
        assert p.wait(5) == 0
