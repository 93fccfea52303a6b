"""HTTP/1.1 framing at the edge, over raw sockets (docs/security.md, "HTTP edge"): a
request whose body length a proxy and otpd could read differently (RFC 9112 6.1-6.3)
gets a JSON 400 (501 for a transfer coding otpd cannot decode) with Connection: close,
and the connection is closed, so a request pipelined behind it is never served. Every
answer otpd makes itself is JSON with X-Request-Id, one access log line and a metric;
control characters in the path or the query are refused before api/ sees them."""

import socket
import time

import pytest

from otpdlib import parse_logfmt

FOLLOWER = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def o(otpd_module_factory):
    return otpd_module_factory(env={"OTPD_MAX_BODY_BYTES": 1024})


def exchange(o, data, timeout=5):
    """Send data, read until the peer closes or `timeout`; (bytes read, closed?)."""
    s = socket.create_connection(("127.0.0.1", o.port), timeout=timeout)
    s.sendall(data)
    out = b""
    closed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    s.close()
    return out, closed


def responses(raw):
    """Split a byte stream of HTTP/1.1 answers with Content-Length into
    (status, headers dict lower-cased, body bytes)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out


def assert_refused(o, request, status, words):
    """One JSON answer of `status` whose message holds every word of `words`, with
    X-Request-Id and Connection: close; the connection closed; FOLLOWER not served."""
    raw, closed = exchange(o, request + FOLLOWER)
    got = responses(raw)
    assert len(got) == 1, f"expected one answer, got {len(got)}: {raw!r}"
    st, headers, body = got[0]
    assert st == status, raw
    assert headers.get("content-type") == "application/json", raw
    assert headers.get("x-request-id"), raw
    assert headers.get("connection", "").lower() == "close", raw
    text = body.decode()
    assert text.startswith('{"status":false,'), text
    for w in words:
        assert w.lower() in text.lower(), text
    assert closed, "the connection was kept open after a framing refusal"
    return headers["x-request-id"]


@pytest.mark.parametrize("name,request_bytes,status,words", [
    ("cl_and_te",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\n\r\n", 400, ["Content-Length", "Transfer-Encoding"]),
    ("te_and_cl",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n"
     b"\r\n0\r\n\r\n", 400, ["Content-Length", "Transfer-Encoding"]),
    ("two_lengths",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
     400, ["Content-Length"]),
    ("space_before_colon",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}", 400, ["colon"]),
    ("tab_before_colon",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length\t: 2\r\n\r\n{}", 400, ["colon"]),
    ("gzip",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}", 501, ["gzip"]),
    ("gzip_chunked",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     501, ["gzip"]),
    ("identity",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n{}", 501,
     ["identity"]),
    ("chunked_not_last",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
     400, ["chunked"]),
    ("chunked_twice",
     b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, ["chunked"]),
    ("get_with_unknown_coding",
     b"GET /sms/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xyz\r\n\r\n", 501, ["xyz"]),
    ("te_on_http10",
     b"POST /sms HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, ["HTTP/1.0"]),
    ("no_host",
     b"GET /health HTTP/1.1\r\n\r\n", 400, ["Host"]),
    ("two_hosts",
     b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, ["Host"]),
    ("body_over_limit_on_get",
     b"GET /sms/check HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100,
     413, ["OTPD_MAX_BODY_BYTES"]),
    ("header_value_with_escape",
     b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n", 400, ["control"]),
])
def test_ambiguous_framing_is_refused_and_the_connection_closed(o, name, request_bytes,
                                                                status, words):
    assert_refused(o, request_bytes, status, words)


def test_refusal_has_a_log_line_and_a_metric(o):
    rid = assert_refused(o, b"GET /health HTTP/1.1\r\n\r\n", 400, ["Host"])
    rec = o.wait_log(lambda r: r.get("msg") == "request" and r.get("req") == rid)
    assert rec["status"] == "400" and rec["path"] == "/health", rec
    metrics = o.get("/metrics").text
    assert 'otpd_http_requests_total{method="GET",route="/health",status="400"}' in metrics


def test_header_too_large_is_json_431(o):
    req = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert_refused(o, req, 431, ["head"])


def test_target_too_long_is_json_414(o):
    req = b"GET /sms/check?phone=" + b"7" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert_refused(o, req, 414, ["target"])


def test_what_libmicrohttpd_answers_itself_is_logged_counted_and_closed(o):
    """A Content-Length that is not a number is refused by libmicrohttpd 0.9.75 before
    otpd sees the request (docs/architecture.md): not JSON, but closed, logged, counted."""
    raw, closed = exchange(o, b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\n"
                              b"{}x" + FOLLOWER)
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    assert b'{"status":true}' not in raw, raw
    assert closed
    o.wait_log(lambda r: r.get("msg") == "request" and r.get("by") == "libmicrohttpd"
               and r.get("status") == "400")


def test_absolute_form_target_is_served(o):
    raw, _ = exchange(o, b"GET http://otpd.example/health HTTP/1.1\r\nHost: otpd.example\r\n"
                         b"Connection: close\r\n\r\n")
    (st, headers, body), = responses(raw)
    assert st == 200 and body == b'{"status":true}', raw


def test_absolute_form_without_path_is_root(o):
    raw, _ = exchange(o, b"GET http://otpd.example HTTP/1.1\r\nHost: otpd.example\r\n"
                         b"Connection: close\r\n\r\n")
    (st, headers, body), = responses(raw)
    assert st == 404 and headers["content-type"] == "application/json", raw


def test_good_pipelined_requests_are_all_served(o):
    body = b'{"phone":"77011234567","password":"1"}'
    req = (b"GET /sms/check HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
           + body + FOLLOWER + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw, closed = exchange(o, req)
    got = responses(raw)
    assert [g[0] for g in got] == [200, 200, 200], raw
    assert closed


def test_chunked_body_still_accepted(o, uniq):
    body = b'{"phone":"%s","password":"12345","lifetime":300,"message":"m"}' % \
        uniq.phone().encode()
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw, _ = exchange(o, b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n" + chunks)
    (st, _, got), = responses(raw)
    assert st == 200 and got == b'{"status":true}', raw


@pytest.mark.parametrize("query,field", [
    ("phone=77011234567&password=12345%00zz", "password"),
    ("phone=77011234567%0a&password=1", "phone"),
    ("phone=77011234567&pass%00word=1", "pass"),
    ("phone=77011234567&password=1%7f", "password"),
    ("phone=77011234567&password=1%1b", "password"),
])
def test_control_characters_in_the_query_are_400_naming_the_field(o, query, field):
    raw, _ = exchange(o, b"GET /sms/check?" + query.encode() +
                      b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (st, headers, body), = responses(raw)
    assert st == 400 and headers["content-type"] == "application/json", raw
    text = body.decode()
    assert f'\\"{field}' in text and "control characters" in text, text


@pytest.mark.parametrize("path", ["/heal%00th", "/health%00", "/sms%0d%0acheck", "/a%7f"])
def test_control_characters_in_the_path_are_400(o, path):
    raw, _ = exchange(o, b"GET " + path.encode() +
                      b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (st, headers, body), = responses(raw)
    assert st == 400 and headers["content-type"] == "application/json", raw
    assert b"path must not contain control characters" in body, body


def test_nul_in_password_does_not_check_true(o, uniq):
    phone = uniq.phone()
    o.send_ok("sms", phone, "12345")
    raw, _ = exchange(o, b"GET /sms/check?phone=" + phone.encode() +
                      b"&password=12345%00zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (st, _, body), = responses(raw)
    assert st == 400 and b'"status":false' in body, raw
    assert o.check("sms", phone, "12345") is True


def test_server_still_healthy(o):
    raw, _ = exchange(o, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b'{"status":true}' in raw
    errors = [parse_logfmt(l) for l in o.log_lines() if "level=error" in l]
    assert not errors, o.log_tail()
