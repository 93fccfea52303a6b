"""e2elib - helpers of the end-to-end delivery and multi-process tests (test_delivery.py,
test_pg_multi.py). Builds on otpdlib (the otpd process) and tests/fakes/fakes.py (the
local fake providers); nothing here mocks otpd.

  fakes              the tests/fakes/fakes.py module (FakeHTTP, FakeSMTP)
  ordered(x)         a JSON text or value as nested lists of (key, value) pairs, so that
                     comparing two of them checks equality AND key order
  outbox(o, **q)     GET /admin/outbox?q... -> its "content" ({"jobs": [...], "counts": {...}})
  wait_jobs(o, pred, timeout, **q)   poll /admin/outbox until pred(content) is true
  all_in_state(n, state)             a wait_jobs predicate: n jobs, all in state
  wait_until(pred, timeout, what)    poll any condition (20 ms steps), fail with `what`
  assert_code_not_logged(o, *codes)  no log line of o contains any of the codes
  quiet(fake, n, settle)             wait until fake has n records, then `settle` seconds
                                     more, and assert that it still has exactly n
  reserve_port()     a free 127.0.0.1 port to point otpd at before anything listens there
  secret_key()       a random OTPD_SECRET_KEY (64 hex characters)
  pg_bin(name)       a PostgreSQL client/server binary (psql, pg_ctl, pg_dump) or None
  pg_as_owner(args)  run a PostgreSQL server binary as the cluster's owner (postgres when
                     we are root), as scripts/pg-test-server.sh does
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from otpdlib import REPO, assert_json, free_port

sys.path.insert(0, str(REPO / "tests" / "fakes"))
import fakes  # noqa: E402  (tests/fakes/fakes.py, owned by the providers engineer)

# Generous: a loaded 2-core machine, and ASan builds.
DELIVERY_TIMEOUT = 60.0


def ordered(x):
    """JSON text (str/bytes) or an already parsed value -> the same value with every object
    turned into a list of (key, value) pairs in document order (lists stay lists)."""
    if isinstance(x, (bytes, bytearray)):
        x = x.decode("utf-8")
    if isinstance(x, str):
        return json.loads(x, object_pairs_hook=lambda kv: [(k, v) for k, v in kv])
    return ordered(json.dumps(x))


def outbox(o, **query):
    """GET /admin/outbox with `query` as the query string; returns the content object."""
    r = o.get("/admin/outbox", params=query or None)
    body = assert_json(r, 200)
    assert body.get("status") is True, r.text
    return body["content"]


def wait_until(pred, timeout=DELIVERY_TIMEOUT, what="condition", step=0.02):
    """Call pred() until it returns a true value (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def wait_jobs(o, pred, timeout=DELIVERY_TIMEOUT, what="outbox state", **query):
    """Poll GET /admin/outbox (with query) until pred(content) is true; return content."""
    last = {}

    def probe():
        last["c"] = outbox(o, **query)
        return last["c"] if pred(last["c"]) else None

    try:
        return wait_until(probe, timeout, what, step=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}; last /admin/outbox: {json.dumps(last.get('c'))}\n"
                             + o.log_tail(30)) from None


def all_in_state(n, state="sent"):
    """A wait_jobs predicate: exactly n jobs, all in `state`, in both the list and the
    counts (the endpoint reads them one after the other, so check both)."""
    def pred(c):
        return (c["counts"][state] == n and len(c["jobs"]) == n
                and all(j["state"] == state for j in c["jobs"]))
    return pred


def only_job(content):
    """The single job of an /admin/outbox content (asserts there is exactly one)."""
    jobs = content["jobs"]
    assert len(jobs) == 1, json.dumps(content)
    return jobs[0]


def assert_code_not_logged(o, *codes):
    """No line of otpd's stderr (every run) contains any of the codes."""
    text = o.log_text()
    for code in codes:
        assert code not in text, (
            f"code {code!r} found in otpd's log:\n"
            + "\n".join(l for l in text.splitlines() if code in l))


def quiet(fake, n, settle=1.5, timeout=DELIVERY_TIMEOUT):
    """Wait until `fake` recorded n requests/messages, then `settle` seconds more (a
    duplicate would come within one poll period of the workers, 1 s), and assert it still
    has exactly n. Returns the records."""
    fake.wait_for(n, timeout)
    time.sleep(settle)
    got = fake.requests if isinstance(fake, fakes.FakeHTTP) else fake.messages
    assert len(got) == n, f"expected exactly {n} deliveries, got {len(got)}: " + json.dumps(
        [g.get("body_text") for g in got])
    return got


def reserve_port():
    """A free port of 127.0.0.1 for a fake that is started later (or never)."""
    return free_port()


def secret_key():
    return secrets.token_hex(32)


def pg_bin(name):
    """psql, pg_ctl, pg_dump...: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                  key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
                  reverse=True)
    for d in dirs:
        if (d / name).exists():
            return str(d / name)
    return None


def pg_as_owner(args, timeout=120):
    """Run args (a PostgreSQL server binary first) as the cluster owner, like
    scripts/pg-test-server.sh: `postgres` when we are root, else ourselves."""
    if os.getuid() == 0:
        if shutil.which("runuser"):
            args = ["runuser", "-u", "postgres", "--"] + list(args)
        else:
            args = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                    "--"] + list(args)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
