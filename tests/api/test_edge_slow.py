"""The HTTP edge against slow and greedy clients (docs/security.md, "HTTP edge"):
OTPD_HEADER_TIMEOUT and OTPD_BODY_TIMEOUT bound the time to send a whole head and body
however steadily a client trickles, OTPD_MAX_CONNECTIONS_PER_IP and OTPD_MAX_CONNECTIONS
close a connection over them at once instead of leaving it waiting in the backlog, and
normal clients are answered promptly while more than a thousand slow clients trickle.

Slow clients come from many loopback addresses (127.0.0.0/8 is all this machine's), so
the per-address cap does not refuse them all; the normal client is 127.0.0.1."""

import resource
import selectors
import socket
import time

import pytest
import requests

from otpdlib import assert_ok

SLOW_CLIENTS = 1200
SOURCES = 40                     # 30 slow connections per source address
ROUNDS = 10                      # seconds of trickling


@pytest.fixture(scope="module", autouse=True)
def enough_files():
    """Room for the slow sockets in this process (and in otpd, which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SLOW_CLIENTS + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {want} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(o, source="127.0.0.1", timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", o.port))
    return s


def closed_within(s, seconds):
    """True when the peer closed (EOF or reset) within `seconds`; data read is skipped."""
    s.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def timed_health(o):
    t0 = time.monotonic()
    r = requests.get(o.url("/health"), timeout=10)
    took = time.monotonic() - t0
    assert_ok(r)
    return took


def test_head_trickled_byte_by_byte_is_cut_at_the_header_timeout(otpd_factory):
    o = otpd_factory(env={"OTPD_HEADER_TIMEOUT": 2})
    s = connect(o)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400
    t0 = time.monotonic()
    cut = None
    s.settimeout(0.1)
    for i in range(len(head)):
        # one byte every 50 ms: never idle long enough for an idle timeout
        try:
            s.send(head[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            cut = time.monotonic() - t0
            break
        try:
            if s.recv(100) == b"":
                cut = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            cut = time.monotonic() - t0
            break
        time.sleep(0.05)  # the trickle itself is the subject of this test
    s.close()
    assert cut is not None, "otpd kept reading a head trickled for 20 s"
    assert 1.5 <= cut <= 5, f"cut after {cut:.2f}s, OTPD_HEADER_TIMEOUT is 2"
    o.wait_log(lambda r: r.get("msg") == "request timeout" and r.get("heads") == "1")
    m = o.get("/metrics").text
    assert 'otpd_http_request_timeouts_total{phase="head"} 1' in m, m


def test_silent_connection_is_cut_at_the_header_timeout(otpd_factory):
    o = otpd_factory(env={"OTPD_HEADER_TIMEOUT": 1})
    s = connect(o)
    t0 = time.monotonic()
    assert closed_within(s, 10)
    assert time.monotonic() - t0 < 4
    s.close()


def test_body_trickled_is_cut_at_the_body_timeout(otpd_factory):
    o = otpd_factory(env={"OTPD_BODY_TIMEOUT": 2, "OTPD_HEADER_TIMEOUT": 30})
    s = connect(o)
    body = b'{"phone":"77011234567","password":"12345","lifetime":300,"message":"' + \
        b"m" * 300 + b'"}'
    s.sendall(b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    t0 = time.monotonic()
    cut = None
    s.settimeout(0.1)
    for i in range(len(body) - 1):
        try:
            s.send(body[i:i + 1])
            if s.recv(100) == b"":
                cut = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except (BrokenPipeError, ConnectionResetError):
            cut = time.monotonic() - t0
            break
        time.sleep(0.05)  # the trickle itself is the subject of this test
    s.close()
    assert cut is not None, "otpd kept reading a body trickled for 15 s"
    assert 1.5 <= cut <= 5, f"cut after {cut:.2f}s, OTPD_BODY_TIMEOUT is 2"
    o.wait_log(lambda r: r.get("msg") == "request timeout" and r.get("bodies") == "1")


def test_keep_alive_still_works(otpd_factory):
    o = otpd_factory(env={"OTPD_HEADER_TIMEOUT": 5})
    with requests.Session() as sess:
        for _ in range(20):
            assert_ok(sess.get(o.url("/health"), timeout=10))
    s = connect(o)
    for _ in range(3):
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b'{"status":true}' not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert b"Connection: close" not in data, data
    s.close()


def test_connections_over_the_per_ip_cap_are_closed_at_once(otpd_factory):
    o = otpd_factory(env={"OTPD_MAX_CONNECTIONS_PER_IP": 5, "OTPD_HEADER_TIMEOUT": 30})
    held = [connect(o, "127.0.0.7") for _ in range(5)]
    try:
        extra = connect(o, "127.0.0.7")
        t0 = time.monotonic()
        assert closed_within(extra, 5), "the 6th connection of one address was kept"
        assert time.monotonic() - t0 < 2
        extra.close()
        # another address is not affected, nor are the five held ones
        assert timed_health(o) < 5
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        held[0].settimeout(10)
        assert b'{"status":true}' in held[0].recv(4096)
    finally:
        for s in held:
            s.close()
    m = o.get("/metrics").text
    assert 'otpd_http_connections_refused_total{limit="max_connections_per_ip"} 1' in m, m
    o.wait_log(lambda r: r.get("msg") == "connection refused"
               and r.get("limit") == "OTPD_MAX_CONNECTIONS_PER_IP")


def test_connections_over_the_limit_are_closed_at_once(otpd_factory):
    o = otpd_factory(env={"OTPD_MAX_CONNECTIONS": 20, "OTPD_MAX_CONNECTIONS_PER_IP": 0,
                          "OTPD_HEADER_TIMEOUT": 30})
    held = []
    try:
        # fill the limit; the fixture's own health poll may still be closing its socket
        deadline = time.monotonic() + 10
        while len(held) < 20 and time.monotonic() < deadline:
            held.append(connect(o, "127.0.0.9"))
        refused = 0
        for _ in range(5):
            s = connect(o, "127.0.0.9")
            t0 = time.monotonic()
            if closed_within(s, 3):
                refused += 1
                assert time.monotonic() - t0 < 2
            s.close()
        assert refused >= 4, f"only {refused} of 5 connections past the limit were refused"
    finally:
        for s in held:
            s.close()
    # once the held ones are gone, clients are served again
    deadline = time.monotonic() + 10
    while True:
        try:
            assert_ok(requests.get(o.url("/health"), timeout=5))
            break
        except (requests.ConnectionError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    m = o.get("/metrics").text
    assert 'otpd_http_connections_refused_total{limit="max_connections"}' in m, m


def test_normal_clients_answered_promptly_while_1200_slow_clients_trickle(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_HEADER_TIMEOUT": 60, "OTPD_MAX_CONNECTIONS_PER_IP": 64})
    sel = selectors.DefaultSelector()
    slow = []
    try:
        for i in range(SLOW_CLIENTS):
            s = connect(o, f"127.0.1.{1 + i % SOURCES}")
            s.setblocking(False)
            s.send(b"G")
            slow.append(s)
            sel.register(s, selectors.EVENT_READ)
        line = b"ET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100
        took = []
        sends = []
        start = time.monotonic()
        # ten one-second rounds: every slow client sends one more byte, then normal
        # clients ask, one after another, for the rest of the second
        for pos in range(ROUNDS):
            for s in slow:
                try:
                    s.send(line[pos:pos + 1])
                except BlockingIOError:
                    pass
            round_end = start + pos + 1
            while True:
                took.append(timed_health(o))
                phone, code = uniq.phone(), uniq.code()
                t0 = time.monotonic()
                o.send_ok("sms", phone, code)
                sends.append(time.monotonic() - t0)
                if time.monotonic() >= round_end:
                    break
        # none of the slow clients was answered or dropped: they are all still held
        dropped = 0
        for key, _ in sel.select(timeout=0):
            try:
                if key.fileobj.recv(1) == b"":
                    dropped += 1
            except (BlockingIOError, ConnectionResetError):
                dropped += 1
        elapsed = time.monotonic() - start
        took.sort()
        sends.sort()
        print(f"\n{SLOW_CLIENTS} slow clients held ({dropped} dropped) for {elapsed:.1f}s; "
              f"{len(took)} GET + {len(sends)} POST meanwhile; "
              f"GET /health: median {took[len(took) // 2] * 1000:.1f} ms, "
              f"max {took[-1] * 1000:.1f} ms; POST /sms: median "
              f"{sends[len(sends) // 2] * 1000:.1f} ms, max {sends[-1] * 1000:.1f} ms")
        assert dropped == 0, f"{dropped} slow clients were dropped before their deadline"
        assert took[-1] < 1.0, took
        assert sends[-1] < 2.0, sends
        assert len(took) >= ROUNDS
    finally:
        for s in slow:
            sel.unregister(s)
            s.close()
        sel.close()
