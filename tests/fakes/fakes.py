#!/usr/bin/python3
"""Local fake delivery services for otpd's tests: stdlib only.

FakeHTTP stands in for every HTTP provider (the old Queue, http-telegram-notify, the
Telegram Bot API, Twilio, the WhatsApp Cloud API, a webhook receiver); FakeSMTP for an
SMTP relay. Both listen on 127.0.0.1 (port 0 = a free port), run in a thread, record
every request byte for byte, and answer from a script so tests can provoke retries,
permanent refusals and quirks.

From pytest:

    with FakeHTTP([{"status": 500, "times": 3}, {"status": 200}]) as fake:
        ...  # point otpd at fake.url
        req = fake.wait_for(1)[0]
        assert req["body"] == b'{"to":1}'

From C tests or a shell (runs until SIGTERM/SIGINT):

    python3 tests/fakes/fakes.py http --port 0 --port-file P --record FILE --script JSON
    python3 tests/fakes/fakes.py smtp --port 0 --port-file P --record FILE --auth u:p

--record appends one JSON object per request/message (bodies as hex and, when valid
UTF-8, as text) before the answer is sent, so a client that got its answer can read it.
--port-file receives the bound port once the server accepts connections (written to a
temporary name, then renamed: readers never see a partial file).

A script is a list of responses tried in order. Each is an object with
  status (200), body (string) or json (any value, sent as JSON), headers ({}),
  path (exact request path without query) or path_prefix, method, times (how many
  requests it answers; absent = forever), delay (seconds to wait before answering).
The first entry that matches the request and has answers left is used; when all
matching entries are used up, the last matching one answers again. No script: every
request gets 200 {"status":true} (what the old Queue answered). A script with no
matching entry answers 404.
"""

import argparse
import base64
import binascii
import json
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 16 * 1024 * 1024
MAX_LINE = 64 * 1024


def _body_record(data):
    rec = {"body_hex": binascii.hexlify(data).decode("ascii")}
    try:
        rec["body_text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        rec["body_text"] = None
    return rec


class _Recorder:
    """Keeps records in memory and, optionally, appends them to a JSON-lines file."""

    def __init__(self, record_path=None):
        self.items = []
        self.cond = threading.Condition()
        self.record_path = record_path

    def add(self, item, file_item):
        with self.cond:
            self.items.append(item)
            if self.record_path:
                with open(self.record_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(file_item, sort_keys=True) + "\n")
                    f.flush()
            self.cond.notify_all()

    def wait_for(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("expected %d records, got %d" % (n, len(self.items)))
                self.cond.wait(left)
            return list(self.items)

    def clear(self):
        with self.cond:
            self.items.clear()


class _Script:
    def __init__(self, entries):
        self.lock = threading.Lock()
        self.set(entries)

    def set(self, entries):
        with self.lock:
            self.entries = [dict(e) for e in (entries or [])]
            for e in self.entries:
                e["_used"] = 0
            self.empty = not self.entries

    @staticmethod
    def _matches(e, method, path):
        if "method" in e and e["method"].upper() != method:
            return False
        if "path" in e and e["path"] != path:
            return False
        if "path_prefix" in e and not path.startswith(e["path_prefix"]):
            return False
        return True

    def pick(self, method, path):
        with self.lock:
            if self.empty:
                return {"status": 200, "json": {"status": True}}
            last = None
            for e in self.entries:
                if not self._matches(e, method, path):
                    continue
                last = e
                times = e.get("times")
                if times is None or e["_used"] < times:
                    e["_used"] += 1
                    return e
            if last is not None:
                return last
            return {"status": 404, "body": "no scripted answer for this path\n"}


def _render(entry):
    headers = dict(entry.get("headers", {}))
    if "json" in entry:
        body = json.dumps(entry["json"], separators=(",", ":")).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    else:
        body = entry.get("body", "")
        body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return int(entry.get("status", 200)), headers, body


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHTTP/1"

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size_line = self.rfile.readline(MAX_LINE)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline(MAX_LINE)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self):
        fake = self.server.fake
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        headers = [[k, v] for k, v in self.headers.items()]
        rec = {"method": self.command, "path": self.path, "headers": headers}
        rec.update(_body_record(body))
        mem = dict(rec)
        mem["body"] = body
        mem["header_map"] = {k.lower(): v for k, v in self.headers.items()}
        fake.recorder.add(mem, rec)
        entry = fake.script.pick(self.command, path)
        delay = float(entry.get("delay", 0))
        if delay > 0 and fake.stopping.wait(delay):
            return
        status, rheaders, rbody = _render(entry)
        self.send_response(status)
        for k, v in rheaders.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rbody)))
        self.end_headers()
        self.wfile.write(rbody)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server:
    """Shared start/stop/context-manager plumbing."""

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self.server.server_address[1]

    def wait_for(self, n, timeout=10.0):
        """Block until at least n requests/messages arrived; return all of them."""
        return self.recorder.wait_for(n, timeout)

    def clear(self):
        self.recorder.clear()


class _CountingHTTPServer(ThreadingHTTPServer):
    """Counts the TCP connections it accepts (keep-alive tests: one connection may carry
    many requests)."""

    def __init__(self, *args, **kw):
        self.connections = 0
        self.connections_lock = threading.Lock()
        super().__init__(*args, **kw)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections += 1
        super().process_request(request, client_address)


class FakeHTTP(_Server):
    """A scripted HTTP server. `requests` holds dicts with method, path (with query),
    headers ([[name, value], ...] in arrival order), header_map (lower-case names),
    body (bytes), body_text (str or None), body_hex. `connections` is how many TCP
    connections it accepted."""

    def __init__(self, script=None, port=0, record=None):
        self.script = _Script(script)
        self.recorder = _Recorder(record)
        self.stopping = threading.Event()
        self.server = _CountingHTTPServer(("127.0.0.1", port), _HTTPHandler)
        self.server.daemon_threads = True
        self.server.fake = self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def requests(self):
        with self.recorder.cond:
            return list(self.recorder.items)

    @property
    def connections(self):
        with self.server.connections_lock:
            return self.server.connections

    def set_script(self, script):
        self.script.set(script)


class _SMTPHandler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.fake = self.server.fake

    def reply(self, line):
        self.wfile.write(line.encode("utf-8") + b"\r\n")
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(MAX_LINE)
        if not line:
            raise EOFError
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def reset(self):
        self.mail_from = None
        self.rcpt_to = []

    def handle(self):
        fake = self.fake
        self.helo = None
        self.auth = None
        self.starttls_requested = False
        self.reset()
        self.reply("220 fake.smtp ESMTP ready")
        try:
            while True:
                line = self.readline()
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    self.helo = arg
                    self.reset()
                    caps = ["fake.smtp greets " + arg, "8BITMIME", "SIZE 10485760"]
                    if fake.starttls:
                        caps.append("STARTTLS")
                    if fake.auth_mechs:
                        caps.append("AUTH " + " ".join(fake.auth_mechs))
                    caps.append("HELP")
                    for c in caps[:-1]:
                        self.reply("250-" + c)
                    self.reply("250 " + caps[-1])
                elif verb == "HELO":
                    self.helo = arg
                    self.reset()
                    self.reply("250 fake.smtp")
                elif verb == "STARTTLS" and fake.starttls:
                    # advertised but not available: a client in "try" mode goes on in
                    # clear text, one that requires TLS must give up
                    self.starttls_requested = True
                    self.reply("454 4.7.0 TLS not available")
                elif verb == "AUTH" and fake.auth_mechs:
                    self.do_auth(arg)
                elif verb == "MAIL":
                    if fake.credentials and self.auth is None:
                        self.reply("530 5.7.0 Authentication required")
                        continue
                    self.reset()
                    self.mail_from = _angle(arg[5:] if arg.upper().startswith("FROM:") else arg)
                    self.reply(fake.next_reply("mail", "250 2.1.0 Ok"))
                elif verb == "RCPT":
                    if self.mail_from is None:
                        self.reply("503 5.5.1 MAIL first")
                        continue
                    r = fake.next_reply("rcpt", "250 2.1.5 Ok")
                    if r.startswith("2"):
                        self.rcpt_to.append(_angle(arg[3:] if arg.upper().startswith("TO:") else arg))
                    self.reply(r)
                elif verb == "DATA":
                    if not self.rcpt_to:
                        self.reply("503 5.5.1 RCPT first")
                        continue
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    self.do_data()
                elif verb == "RSET":
                    self.reset()
                    self.reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    self.reply("250 2.0.0 Ok")
                elif verb == "VRFY":
                    self.reply("252 2.0.0 Cannot VRFY user")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("500 5.5.2 Command not recognized")
        except (EOFError, ConnectionError):
            return

    def do_auth(self, arg):
        fake = self.fake
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        try:
            if mech == "PLAIN" and "PLAIN" in fake.auth_mechs:
                if not initial:
                    self.reply("334 ")
                    initial = self.readline()
                parts = base64.b64decode(initial, validate=True).split(b"\0")
                if len(parts) != 3:
                    raise ValueError
                user, password = parts[1].decode(), parts[2].decode()
            elif mech == "LOGIN" and "LOGIN" in fake.auth_mechs:
                if not initial:
                    self.reply("334 VXNlcm5hbWU6")
                    initial = self.readline()
                user = base64.b64decode(initial, validate=True).decode()
                self.reply("334 UGFzc3dvcmQ6")
                password = base64.b64decode(self.readline(), validate=True).decode()
            else:
                self.reply("504 5.5.4 Unrecognized authentication type")
                return
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self.reply("501 5.5.2 Cannot decode response")
            return
        if fake.credentials and (user, password) != fake.credentials:
            self.reply("535 5.7.8 Authentication credentials invalid")
            return
        self.auth = {"mech": mech, "username": user, "password": password}
        self.reply("235 2.7.0 Authentication successful")

    def do_data(self):
        fake = self.fake
        data = bytearray()
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                raise EOFError
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):
                line = line[1:]  # undo dot-stuffing
            data += line
            if len(data) > MAX_BODY:
                self.reply("552 5.3.4 Message too big")
                return
        reply = fake.next_reply("data", "250 2.0.0 Ok: queued")
        rec = {"helo": self.helo, "auth": self.auth, "mail_from": self.mail_from,
               "rcpt_to": list(self.rcpt_to), "starttls_requested": self.starttls_requested,
               "reply": reply}
        rec.update(_body_record(bytes(data)))
        mem = dict(rec)
        mem["data"] = bytes(data)
        fake.recorder.add(mem, rec)
        self.reset()
        self.reply(reply)


def _angle(s):
    s = s.strip()
    if s.startswith("<"):
        end = s.find(">")
        return s[1:end] if end > 0 else s[1:]
    return s.split(" ", 1)[0]


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class FakeSMTP(_Server):
    """A minimal SMTP server. `messages` holds dicts with helo, auth ({mech, username,
    password} or None), mail_from, rcpt_to, starttls_requested, data (bytes as received
    after un-dot-stuffing), body_text, reply.

    starttls: advertise STARTTLS but answer 454 (TLS not available) when asked.
    auth: "user:password" to require and check AUTH; auth_mechs: advertised mechanisms.
    replies: {"mail"|"rcpt"|"data": ["451 4.3.0 Try later", ...]} consumed in order; when
    a list is used up its last reply repeats (an empty list: the normal 250)."""

    def __init__(self, port=0, record=None, starttls=False, auth=None,
                 auth_mechs=("PLAIN", "LOGIN"), replies=None):
        self.recorder = _Recorder(record)
        self.stopping = threading.Event()
        self.starttls = starttls
        self.credentials = tuple(auth.split(":", 1)) if auth else None
        self.auth_mechs = list(auth_mechs) if (auth or auth_mechs) else []
        self.replies = {k: list(v) for k, v in (replies or {}).items()}
        self.reply_lock = threading.Lock()
        self.server = _ThreadingTCPServer(("127.0.0.1", port), _SMTPHandler)
        self.server.fake = self

    @property
    def messages(self):
        with self.recorder.cond:
            return list(self.recorder.items)

    def next_reply(self, stage, default):
        with self.reply_lock:
            lst = self.replies.get(stage)
            if not lst:
                return default
            return lst.pop(0) if len(lst) > 1 else lst[0]


def _write_port_file(path, port):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    for kind in ("http", "smtp"):
        p = sub.add_parser(kind)
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--port-file")
        p.add_argument("--record")
        if kind == "http":
            p.add_argument("--script", help="JSON list of responses (see module doc)")
        else:
            p.add_argument("--starttls", action="store_true",
                           help="advertise STARTTLS (answered 454: not required)")
            p.add_argument("--auth", help="user:password to require")
            p.add_argument("--auth-mechs", default="PLAIN LOGIN")
            p.add_argument("--mail-reply", action="append", default=[])
            p.add_argument("--rcpt-reply", action="append", default=[])
            p.add_argument("--data-reply", action="append", default=[])
    args = ap.parse_args(argv)

    if args.kind == "http":
        script = json.loads(args.script) if args.script else None
        fake = FakeHTTP(script, port=args.port, record=args.record)
    else:
        fake = FakeSMTP(port=args.port, record=args.record, starttls=args.starttls,
                        auth=args.auth, auth_mechs=args.auth_mechs.split(),
                        replies={"mail": args.mail_reply, "rcpt": args.rcpt_reply,
                                 "data": args.data_reply})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    fake.start()
    if args.port_file:
        _write_port_file(args.port_file, fake.port)
    print("fake %s listening on 127.0.0.1:%d" % (args.kind, fake.port), flush=True)
    while not done.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
