"""Codes are never logged or stored in clear (COMPAT.md: "otpd stores a keyed hash (and,
only when /password is enabled, an encrypted copy)"; DESIGN "Codes are never stored or
logged in clear"). Distinctive codes are sent, checked right and wrong, looked up, and
then searched for, while still live, in otpd's stderr and in the raw bytes of every file
of the data directory (otpd.db, -wal, -shm, the key) — and, on PostgreSQL, in a data dump
of the instance's schema."""

import pytest

from otpdlib import assert_json, pg_dump_schema

CODES = {"sms": "918273", "call": "827364", "email": "736455", "telegram": "645546"}
WRONG = ["564738", "473829"]
AUTH_PASSWORD = "Hunter2-very-secret-pw"


def exercise(o, uniq, readback=False):
    """Send, check, look up with every distinctive code; returns the targets used."""
    targets = {}
    auth = ("user", AUTH_PASSWORD)
    o.auth = auth
    for ch, code in CODES.items():
        target = uniq.target(ch)
        targets[ch] = target
        r = o.send(ch, target, code)
        assert r.status_code == 200, r.text
    # a send through the query string (it must not be logged with the URL)
    phone_q = uniq.phone()
    r = o.post("/sms", params={"phone": phone_q, "password": "382910", "lifetime": "300",
                               "message": "Your OTP is 382910"}, auth=auth)
    assert r.status_code == 200, r.text
    for ch, code in CODES.items():
        field = {"sms": "phone", "call": "phone", "email": "email", "telegram": "chat_id"}[ch]
        assert assert_json(o.get(f"/{ch}/check", {field: targets[ch], "password": code},
                                 auth=auth), 200) == {"status": True}
        for w in WRONG:
            r = o.get(f"/{ch}/check", params={field: targets[ch], "password": w}, auth=auth)
            assert r.json() == {"status": False}, r.text
        r = o.get("/target", params={"password": code, "channel": ch}, auth=auth)
        assert r.json()["content"]["target"] == targets[ch], r.text
    r = o.get("/password", {"target": targets["sms"]}, auth=auth)
    if readback:
        assert r.json()["content"]["password"] == CODES["sms"], r.text
    else:
        assert r.status_code == 403, r.text
    # let the outbox deliver everything (the log provider writes its lines)
    o.wait_log(lambda rec: rec.get("msg") == "deliver" and rec.get("channel") == "telegram")
    o.wait_log(lambda rec: rec.get("msg") == "deliver" and rec.get("channel") == "email")
    return targets


def secret_strings():
    return list(CODES.values()) + WRONG + ["382910", AUTH_PASSWORD]


def assert_nowhere(o, where):
    needles = [s.encode() for s in secret_strings()]
    found = []
    log = o.log_bytes()
    for n in needles:
        if n in log:
            found.append(f"{n.decode()} in stderr")
    for f in sorted(o.data_dir.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            for n in needles:
                if n in data:
                    found.append(f"{n.decode()} in {f.name}")
    if o.backend == "pg":
        dump = pg_dump_schema(o.pg, o.schema)
        if dump is not None:
            for n in needles:
                if n in dump:
                    found.append(f"{n.decode()} in the PostgreSQL schema {o.schema}")
    assert not found, f"secrets in clear ({where}): {found}"


@pytest.mark.parametrize("readback", [False, True], ids=["plain", "password_readback"])
def test_no_code_in_clear_in_logs_or_data(otpd_factory, uniq, readback):
    env = {"HTTP_AUTH_USERNAME": "user", "HTTP_AUTH_PASSWORD": AUTH_PASSWORD,
           "OTPD_LOG_LEVEL": "debug"}
    if readback:
        env["OTPD_PASSWORD_READBACK"] = "true"
    o = otpd_factory(env=env)
    targets = exercise(o, uniq, readback)
    # the codes are live: the check still says so
    assert o.check("sms", targets["sms"], CODES["sms"]) is True
    if o.backend == "sqlite":
        names = {f.name for f in o.data_dir.iterdir()}
        assert "otpd.db" in names, names
    assert_nowhere(o, "while running")
    o.stop()
    assert_nowhere(o, "after a clean stop")


def test_log_provider_masks_codes_by_default(otpd_factory, uniq):
    o = otpd_factory()
    phone = uniq.phone()
    o.send_ok("sms", phone, "918273")
    rec = o.wait_log(lambda rec: rec.get("msg") == "deliver" and rec.get("channel") == "sms")
    assert rec.get("code") != "918273"
    assert phone not in o.log_text()  # targets are masked in the log too
    assert "918273" not in o.log_text()
