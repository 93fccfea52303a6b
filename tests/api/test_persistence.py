"""Durability across restarts (COMPAT.md "Sending and checking": otpd answers only after
the code and its delivery job are durably stored; DESIGN: the key is generated once and
kept, mode 0600, in the data directory)."""

import os
import stat
import threading

from otpdlib import assert_json, assert_ok


def test_codes_survive_a_clean_restart(otpd, uniq):
    sent = [(ch, uniq.target(ch), uniq.code()) for ch in ("sms", "call", "email", "telegram")]
    for ch, target, code in sent:
        otpd.send_ok(ch, target, code)
    otpd.restart()
    for ch, target, code in sent:
        assert otpd.check(ch, target, code) is True, (ch, target)
        assert otpd.check(ch, target, uniq.code()) is False


def test_codes_survive_sigkill_right_after_the_answer(otpd, uniq):
    sent = [(ch, uniq.target(ch), uniq.code()) for ch in ("sms", "call", "email", "telegram")]
    for ch, target, code in sent:
        otpd.send_ok(ch, target, code)
    otpd.kill()  # no chance to flush anything: what was answered 200 must be on disk
    otpd.start()
    for ch, target, code in sent:
        assert otpd.check(ch, target, code) is True, (ch, target)


def test_concurrent_sends_survive_sigkill(otpd, uniq):
    sent = [(uniq.phone(), uniq.code()) for _ in range(24)]
    answers = [None] * len(sent)

    def worker(i):
        phone, code = sent[i]
        answers[i] = otpd.send("sms", phone, code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(sent))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in answers:
        assert_ok(r)
    otpd.kill()
    otpd.start()
    for phone, code in sent:
        assert otpd.check("sms", phone, code) is True, phone


def test_limits_survive_a_restart(otpd, uniq):
    rules = {"ips": [{"minutes": 10, "rate": 5}], "phones": [{"minutes": 10, "rate": 1}]}
    assert_ok(otpd.post("/limit/sms", rules))
    phone = uniq.phone()
    otpd.send_ok("sms", phone, uniq.code(), ip="10.0.0.1")
    otpd.kill()
    otpd.start()
    r = otpd.get("/limit/sms")
    assert assert_json(r, 200)["content"] == rules
    # the send before the restart still counts in the window
    r = otpd.send("sms", phone, uniq.code(), ip="10.0.0.1")
    assert r.status_code == 400 and r.json().get("status_code") == "phone_limit", r.text


def test_wrong_checks_survive_a_restart(otpd_factory, uniq):
    o = otpd_factory(env={"OTPD_MAX_CHECK_ATTEMPTS": "3"})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    assert o.check("sms", phone, uniq.code()) is False
    assert o.check("sms", phone, uniq.code()) is False
    o.restart()
    assert o.check("sms", phone, uniq.code()) is False
    assert o.check("sms", phone, code) is False  # the third wrong check voided it


def test_key_file_is_private_and_kept(otpd, uniq):
    key = otpd.data_dir / "secret.key"
    assert key.exists(), sorted(os.listdir(otpd.data_dir))
    mode = stat.S_IMODE(key.stat().st_mode)
    assert mode == 0o600, oct(mode)
    # the data directory otpd created is private too
    dmode = stat.S_IMODE(otpd.data_dir.stat().st_mode)
    assert dmode == 0o700, oct(dmode)
    before = key.read_bytes()
    phone, code = uniq.phone(), uniq.code()
    otpd.send_ok("sms", phone, code)
    otpd.restart()
    assert key.read_bytes() == before  # the same key, not a new one
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert otpd.check("sms", phone, code) is True


def test_configured_secret_key_is_used_across_data_dirs(otpd_factory, uniq):
    # with OTPD_SECRET_KEY the key comes from configuration: a restart with a different
    # key cannot verify the old codes, the same key can
    k1, k2 = "ab" * 32, "cd" * 32
    o = otpd_factory(env={"OTPD_SECRET_KEY": k1})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    o.restart(env={"OTPD_SECRET_KEY": k2})
    assert o.check("sms", phone, code) is False
    o.restart(env={"OTPD_SECRET_KEY": k1})
    assert o.check("sms", phone, code) is True
    assert k1 not in o.log_text() and k2 not in o.log_text()
