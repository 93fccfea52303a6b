#!/usr/bin/python3
"""report.py MACHINE.tsv RESULTS.tsv - the markdown table of a bench/run.sh run.

RESULTS.tsv lines: scenario, server, role (otpd | baseline | drain), JSON (the BENCH line
of bench/lib.lua, or the outbox drain record). Medians are over the timed runs; the
ratio is otpd's median req/s over the baseline's median req/s in the same scenario.
"""
import json
import statistics
import sys

DESCRIPTIONS = {
    "health": "GET /health",
    "send": "POST /sms, SQLite, delivery via outbox (log provider)",
    "send-dummy": "POST /sms, SQLite, DUMMY=true",
    "check": "GET /sms/check, SQLite, 50% right codes",
    "send-pg": "POST /sms, PostgreSQL, delivery via outbox (log provider)",
    "send-pg-dummy": "POST /sms, PostgreSQL, DUMMY=true",
    "check-pg": "GET /sms/check, PostgreSQL, 50% right codes",
    "native-send": "POST /otp/send vs POST /sms of the same build, SQLite, delivery via outbox",
    "native-verify": "POST /otp/verify (by recipient) vs GET /sms/check of the same build, SQLite, 50% right",
    "native-send-pg": "POST /otp/send vs POST /sms of the same build, PostgreSQL, delivery via outbox",
    "native-verify-pg": "POST /otp/verify vs GET /sms/check of the same build, PostgreSQL, 50% right",
}


def ms(us):
    return "%.2f" % (us / 1000.0)


def main():
    machine = []
    with open(sys.argv[1]) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            machine.append((k, v))
    runs = {}     # (scenario, server) -> [records]
    roles = {}    # (scenario, server) -> role
    drains = {}   # (scenario, server) -> [records]
    order = []
    with open(sys.argv[2]) as f:
        for line in f:
            scenario, server, role, data = line.rstrip("\n").split("\t", 3)
            rec = json.loads(data)
            key = (scenario, server)
            if role == "drain":
                drains.setdefault(key, []).append(rec)
                continue
            if key not in runs:
                order.append(key)
                runs[key] = []
            runs[key].append(rec)
            roles[key] = role

    med = {}
    for key, recs in runs.items():
        med[key] = {
            "rps": statistics.median(r["rps"] for r in recs),
            "p50": statistics.median(r["p50_us"] for r in recs),
            "p99": statistics.median(r["p99_us"] for r in recs),
        }

    out = []
    out.append("## otpd benchmark")
    out.append("")
    for k, v in machine:
        out.append("- %s: %s" % (k, v))
    out.append("")
    out.append("| scenario | server | req/s (median) | p50 ms | p99 ms | otpd / baseline req/s "
               "| req/s of each run | answers |")
    out.append("|---|---|---:|---:|---:|---:|---|---|")
    for key in order:
        scenario, server = key
        m = med[key]
        ratio = ""
        if roles[key] == "otpd":
            base = [k for k in order if k[0] == scenario and roles[k] == "baseline"]
            if base:
                ratio = "**%.2f×** vs %s" % (m["rps"] / med[base[0]]["rps"], base[0][1])
        recs = runs[key]
        t = sum(r["status_true"] for r in recs)
        fa = sum(r["status_false"] for r in recs)
        other = sum(r["other"] for r in recs)
        errs = sum(r["socket_errors"] + r["timeouts"] for r in recs)
        total = max(1, t + fa + other)
        answers = "true %.1f%%" % (100.0 * t / total)
        if fa:
            answers += ", false %.1f%%" % (100.0 * fa / total)
        if other:
            answers += ", **other %d**" % other
        if errs:
            answers += ", **socket errors/timeouts %d**" % errs
        out.append("| %s | %s | %.0f | %s | %s | %s | %s | %s |" % (
            DESCRIPTIONS.get(scenario, scenario), server, m["rps"], ms(m["p50"]), ms(m["p99"]),
            ratio, " ".join("%.0f" % r["rps"] for r in recs), answers))
    notes = []
    for key in order:
        d = [x for x in drains.get(key, [])]
        if not d:
            continue
        backlog = statistics.median(x["backlog"] for x in d)
        secs = statistics.median(x["seconds"] for x in d)
        left = max(x["left"] for x in d)
        if max(x["backlog"] for x in d) == 0:
            notes.append("- %s, %s: no outbox backlog after any run." % key)
            continue
        line = ("- %s, %s: a timed run left a median of %d outbox jobs undelivered; "
                "they were delivered %.1f s (median) after the run%s." % (
                    key[0], key[1], backlog, secs,
                    "" if left == 0 else " (**%d still left after 120 s**)" % left))
        # Sends per second with their delivery included: each run's requests over the
        # run's time plus the time its backlog took to drain.
        recs = runs[key]
        if len(d) == len(recs) and backlog > 0:
            sustained = statistics.median(
                r["requests"] / (r["duration_us"] / 1e6 + x["seconds"]) for r, x in zip(recs, d))
            base = [k for k in order if k[0] == key[0] and roles[k] == "baseline"]
            line += " Counting that time, otpd sustained **%.0f sends/s with delivery**" % sustained
            if base:
                line += " (%.2f× %s, whose figure includes its synchronous Queue call)" % (
                    sustained / med[base[0]]["rps"], base[0][1])
            line += "."
        notes.append(line)
    if notes:
        out.append("")
        out.append("Outbox (otpd answers a send once the code and its delivery job are "
                   "committed; workers deliver after):")
        out.extend(notes)
    print("\n".join(out))


if __name__ == "__main__":
    main()
