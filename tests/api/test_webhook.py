"""POST /telegram/webhook (COMPAT.md "Telegram webhook"): a Telegram Update makes a code
for message.chat.id, delivered through the telegram provider (here: log, with
OTPD_LOG_CODES=true so the code can be read back from the log), findable by GET /target."""

import re
import time

from otpdlib import assert_error, assert_json, assert_ok


def update(chat_id, text="/start", update_id=None, kind="message"):
    return {
        "update_id": update_id or int(time.time() * 1000) % 2_000_000_000,
        kind: {
            "message_id": 17,
            "from": {"id": chat_id, "is_bot": False, "first_name": "Ann", "language_code": "en"},
            "chat": {"id": chat_id, "first_name": "Ann", "type": "private"},
            "date": int(time.time()),
            "text": text,
        },
    }


def delivered_codes(o, channel="telegram"):
    return [rec["code"] for rec in o.log_records()
            if rec.get("msg") == "deliver" and rec.get("channel") == channel and "code" in rec]


def wait_code(o, n=1, timeout=30.0):
    """The n-th telegram code the log provider delivered (waits for the outbox)."""
    deadline = time.monotonic() + timeout
    while True:
        codes = delivered_codes(o)
        if len(codes) >= n:
            return codes[n - 1]
        assert time.monotonic() < deadline, "no telegram delivery in the log:\n" + o.log_tail()
        time.sleep(0.05)


def test_webhook_makes_a_code_for_the_chat(otpd_factory):
    o = otpd_factory(env={"OTPD_LOG_CODES": "true"})
    chat = 987654321
    r = o.post("/telegram/webhook", update(chat))
    assert r.status_code == 200, r.text
    assert_json(r, 200)
    code = wait_code(o)
    assert re.fullmatch(r"[0-9]{6}", code), code  # default: 6 digits
    r = o.get("/target", {"password": code, "channel": "telegram"})
    assert assert_json(r, 200) == {"status": True, "content": {"target": str(chat)}}, r.text
    assert o.check("telegram", str(chat), code) is True
    # a second update makes another code; both are live
    assert o.post("/telegram/webhook", update(chat, update_id=2)).status_code == 200
    code2 = wait_code(o, 2)
    r = o.get("/target", {"password": code2, "channel": "telegram"})
    assert r.json()["content"]["target"] == str(chat)


def test_webhook_group_chat_and_edited_message(otpd_factory):
    o = otpd_factory(env={"OTPD_LOG_CODES": "true"})
    group = -1001234567890
    assert o.post("/telegram/webhook", update(group, kind="edited_message")).status_code == 200
    code = wait_code(o)
    r = o.get("/target", {"password": code, "channel": "telegram"})
    assert r.json() == {"status": True, "content": {"target": str(group)}}, r.text


def test_webhook_code_length_and_lifetime_configurable(otpd_factory):
    o = otpd_factory(env={"OTPD_LOG_CODES": "true", "OTPD_TELEGRAM_WEBHOOK_CODE_LENGTH": "8",
                          "OTPD_TELEGRAM_WEBHOOK_LIFETIME": "1"})
    assert o.post("/telegram/webhook", update(5550001)).status_code == 200
    code = wait_code(o)
    assert re.fullmatch(r"[0-9]{8}", code), code
    deadline = time.monotonic() + 6.0
    while o.check("telegram", "5550001", code):
        assert time.monotonic() < deadline, "a webhook code of lifetime 1 outlived 6 s"
        time.sleep(0.1)


def test_webhook_update_without_message_is_acknowledged(otpd_factory):
    o = otpd_factory(env={"OTPD_LOG_CODES": "true"})
    r = o.post("/telegram/webhook", {"update_id": 5, "callback_query": {"id": "1"}})
    assert r.status_code == 200, r.text
    assert_json(r, 200)


def test_webhook_secret(otpd_factory):
    secret = "s3cr3t-Token_value"
    o = otpd_factory(env={"OTPD_LOG_CODES": "true", "OTPD_TELEGRAM_WEBHOOK_SECRET": secret})
    r = o.post("/telegram/webhook", update(424242))
    assert_error(r, 401)
    r = o.post("/telegram/webhook", update(424242),
               headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
    assert_error(r, 401)
    r = o.post("/telegram/webhook", update(424242),
               headers={"X-Telegram-Bot-Api-Secret-Token": secret + "x"})
    assert_error(r, 401)
    r = o.post("/telegram/webhook", update(424242),
               headers={"X-Telegram-Bot-Api-Secret-Token": secret[:-1]})
    assert_error(r, 401)
    assert delivered_codes(o) == []  # nothing was made for refused updates
    r = o.post("/telegram/webhook", update(424242),
               headers={"X-Telegram-Bot-Api-Secret-Token": secret})
    assert r.status_code == 200, r.text
    code = wait_code(o)
    assert_ok(o.get("/telegram/check", {"chat_id": "424242", "password": code}))
    # the secret is never logged
    assert secret not in o.log_text()
