"""GET /metrics (README "Metrics"): the Prometheus text format 0.0.4, counters that move
exactly with the requests made, labels only from fixed sets, Basic auth like the other
operators' endpoints."""

import re
import secrets
import time

import requests

from e2elib import fakes
from otpdlib import assert_error, assert_ok

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*)\})?'
    r' (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|\+Inf|NaN)$')
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def parse(text):
    """{(name, ((label, value), ...)): float}, checking the format on the way: every
    sample well-formed and unique, every family with HELP and TYPE before its samples."""
    samples, types, helps = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helps, f"TYPE before HELP: {line}"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or "")))
        assert (name, labels) not in samples, f"duplicate sample: {line}"
        fam = name
        if name not in types:
            fam = next((name[:-len(p)] for p in HISTOGRAM_PARTS if name.endswith(p)), name)
            assert types.get(fam) == "histogram", f"{name}: no TYPE line for it"
        samples[(name, labels)] = float(m.group(3))
    assert text.endswith("\n")
    return samples


def scrape(o, **kw):
    r = o.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_of(samples, method, route, status):
    return value(samples, "otpd_http_requests_total", method=method, route=route,
                 status=str(status))


def test_counters_follow_the_requests(otpd, uniq):
    before = scrape(otpd)
    phone, code = uniq.phone(), uniq.code()
    assert_ok(otpd.send("sms", phone, code))
    assert_ok(otpd.send("call", uniq.phone(), uniq.code()))
    assert otpd.post("/sms", {"phone": phone}).status_code == 400   # fields missing
    assert otpd.check("sms", phone, code) is True
    assert otpd.check("sms", phone, uniq.code()) is False
    assert otpd.get("/no/such/path").status_code == 404
    assert otpd.request("DELETE", "/sms").status_code == 405
    after = scrape(otpd)

    def delta(f, *args, **kw):
        return f(after, *args, **kw) - f(before, *args, **kw)

    assert delta(requests_of, "POST", "/sms", 200) == 1
    assert delta(requests_of, "POST", "/sms", 400) == 1
    assert delta(requests_of, "POST", "/call", 200) == 1
    assert delta(requests_of, "GET", "/sms/check", 200) == 2
    assert delta(requests_of, "other", "other", 404) == 1
    assert delta(requests_of, "other", "other", 405) == 1
    assert delta(requests_of, "GET", "/metrics", 200) == 1   # the first scrape
    assert delta(value, "otpd_sends_total", channel="sms", result="accepted") == 1
    assert delta(value, "otpd_sends_total", channel="call", result="accepted") == 1
    # a request refused while reading its fields never reached the send
    assert delta(value, "otpd_sends_total", channel="sms", result="invalid") == 0
    assert delta(value, "otpd_checks_total", channel="sms", result="true") == 1
    assert delta(value, "otpd_checks_total", channel="sms", result="false") == 1
    for ch in ("sms", "call", "email", "telegram", "whatsapp"):
        for result in ("accepted", "limited", "invalid", "failed"):
            assert ("otpd_sends_total", (("channel", ch), ("result", result))) in after

    # the latency histogram of POST /sms: cumulative buckets ending in the count
    key = (("method", "POST"), ("route", "/sms"))
    buckets = sorted(((float(dict(lbl)["le"]), v) for (n, lbl), v in after.items()
                      if n == "otpd_http_request_duration_seconds_bucket"
                      and tuple(x for x in lbl if x[0] != "le") == key))
    assert len(buckets) >= 2 and buckets[-1][0] == float("inf")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    total = after[("otpd_http_request_duration_seconds_count", key)]
    assert counts[-1] == total == value(after, "otpd_http_requests_total", method="POST",
                                        route="/sms", status="200") + \
        value(after, "otpd_http_requests_total", method="POST", route="/sms", status="400")
    assert after[("otpd_http_request_duration_seconds_sum", key)] > 0

    info = [lbl for (n, lbl) in after if n == "otpd_build_info"]
    assert len(info) == 1 and dict(info[0])["store"] == otpd.backend.replace("pg", "postgresql")
    assert 0 < value(after, "otpd_start_time_seconds") <= time.time()

    # both jobs are delivered by the log provider, and counted so
    deadline = time.monotonic() + 20
    while value(scrape(otpd), "otpd_outbox_deliveries_total", outcome="sent") < 2:
        assert time.monotonic() < deadline, "deliveries not counted"
        time.sleep(0.1)
    last = scrape(otpd)
    assert value(last, "otpd_outbox_deliveries_total", outcome="sent") == 2
    assert value(last, "otpd_outbox_deliveries_total", outcome="dead") == 0


def test_a_send_refused_by_a_limit_is_counted_as_limited(otpd, uniq):
    assert_ok(otpd.post("/limit/email", {"emails": [{"minutes": 10, "rate": 1}]}))
    email = uniq.email()
    assert_ok(otpd.send("email", email, uniq.code()))
    assert_error(otpd.send("email", email, uniq.code()), 400, status_code="email_limit")
    got = scrape(otpd)
    assert value(got, "otpd_sends_total", channel="email", result="accepted") == 1
    assert value(got, "otpd_sends_total", channel="email", result="limited") == 1


def test_client_chosen_paths_and_methods_do_not_become_labels(otpd):
    for _ in range(20):
        otpd.get("/" + secrets.token_hex(8))
        otpd.request("PURGE" + secrets.token_hex(2).upper(), "/sms")
    text = otpd.get("/metrics").text
    parse(text)
    routes = set(re.findall(r'route="([^"]*)"', text))
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert routes <= {"other", "/health", "/metrics"}, routes
    assert methods <= {"other", "GET"}, methods
    assert value(parse(text), "otpd_http_requests_total", method="other", route="other",
                 status="404") == 20


def test_metrics_need_basic_auth_when_it_is_configured(otpd_factory):
    o = otpd_factory(env={"HTTP_AUTH_USERNAME": "ops", "HTTP_AUTH_PASSWORD": "s3cret"})
    r = requests.get(o.url("/metrics"), timeout=10)
    assert_error(r, 401)
    assert "otpd_" not in r.text
    got = scrape(o, auth=("ops", "s3cret"))
    assert value(got, "otpd_http_requests_total", method="other", route="other",
                 status="401") == 0
    assert value(got, "otpd_http_requests_total", method="GET", route="/metrics",
                 status="401") == 1


def test_dummy_counts_sends_and_no_deliveries(otpd_factory, uniq):
    o = otpd_factory(env={"DUMMY": "true"})
    assert_ok(o.send("sms", uniq.phone(), uniq.code()))
    time.sleep(0.3)
    got = scrape(o)
    assert value(got, "otpd_sends_total", channel="sms", result="accepted") == 1
    assert value(got, "otpd_outbox_deliveries_total", outcome="sent") == 0


def test_the_outbox_backlog_and_how_overdue_it_is(otpd_factory, uniq):
    """A Queue that holds each request 3 s and one delivery worker: one job is sending,
    the others wait past their due time, and the gauges say so; then all drain."""
    with fakes.FakeHTTP([{"delay": 3}]) as q:
        o = otpd_factory(env={"OTP_QUEUE_URL": q.url, "OTPD_OUTBOX_WORKERS": 1},
                         start=False)
        o.env.pop("OTPD_PROVIDER", None)          # the queue provider, the default
        o.start()
        got = scrape(o)
        assert value(got, "otpd_store_up") == 1
        assert value(got, "otpd_outbox_jobs", state="pending") == 0
        assert value(got, "otpd_outbox_oldest_due_seconds") == 0
        assert_ok(o.send("sms", uniq.phone(), uniq.code()))
        q.wait_for(1, timeout=10)                  # the worker holds the first job ...
        for _ in range(2):                         # ... while two more become due
            assert_ok(o.send("sms", uniq.phone(), uniq.code()))
        time.sleep(2.0)
        got = scrape(o)
        assert value(got, "otpd_outbox_jobs", state="sending") == 1
        assert value(got, "otpd_outbox_jobs", state="pending") == 2
        assert value(got, "otpd_outbox_oldest_due_seconds") >= 1
        deadline = time.monotonic() + 30
        while value(got, "otpd_outbox_deliveries_total", outcome="sent") < 3:
            assert time.monotonic() < deadline, "the backlog did not drain"
            time.sleep(0.2)
            got = scrape(o)
        assert value(got, "otpd_outbox_jobs", state="pending") == 0
        assert value(got, "otpd_outbox_jobs", state="sending") == 0
        assert value(got, "otpd_outbox_oldest_due_seconds") == 0
