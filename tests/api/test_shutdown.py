"""SIGTERM (README "Operating"): otpd stops taking connections at once, finishes the
requests in flight within OTPD_SHUTDOWN_TIMEOUT, and exits 0 — also under load."""

import json
import signal
import socket
import threading
import time

import pytest
import requests

from otpdlib import send_body


def _read_response(sock, timeout=20):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_sigterm_finishes_a_request_in_flight_and_refuses_new_connections(otpd, uniq):
    phone, code = uniq.phone(), uniq.code()
    body = json.dumps(send_body("sms", phone, code)).encode()
    sock = socket.create_connection(("127.0.0.1", otpd.port), timeout=10)
    try:
        sock.sendall(b"POST /sms HTTP/1.1\r\nHost: otpd\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body[:10])
        time.sleep(1.0)  # the headers are read: the request is in flight
        otpd.proc.send_signal(signal.SIGTERM)
        otpd.wait_log("shutting down", timeout=10)

        # the listening socket is shut at once: a new client is refused, not queued
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", otpd.port), timeout=2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "otpd still accepts connections"
            time.sleep(0.05)
        assert otpd.running(), "otpd exited with a request in flight"

        sock.sendall(body[10:])
        answer = _read_response(sock)
    finally:
        sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(payload) == {"status": True}
    assert otpd.proc.wait(timeout=30) == 0
    assert "Fatal error" not in otpd.log_text()

    otpd.start()
    assert otpd.check("sms", phone, code) is True


@pytest.mark.parametrize("round_", range(3))
def test_sigterm_under_load_exits_cleanly(otpd, round_):
    stop = threading.Event()

    def hammer():
        s = requests.Session()
        while not stop.is_set():
            try:
                s.get(otpd.url("/health"), timeout=2)
            except requests.RequestException:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2 + 0.1 * round_)
        rc = otpd.stop(check=False)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert rc == 0, otpd.log_tail()
    assert "Fatal error" not in otpd.log_text(), otpd.log_tail()
    otpd.assert_no_sanitizer_report()
