"""Send limits: POST/GET /limit/<channel> and the limit answers (COMPAT.md "Limits" and
seed 000). Windows are 10 minutes or more so nothing ages out during a test; the sliding
window's ageing itself is not tested (its smallest unit is a minute)."""

import threading
import time

import pytest

from otpdlib import (assert_error, assert_json, assert_missing, assert_ok,
                     pairs)

RULES_KEY = {"sms": "phones", "call": "phones", "email": "emails", "telegram": "chat_ids"}
TARGET_LIMIT = {
    "sms": ("phone_limit", "Phone limit has been reached"),
    "call": ("phone_limit", "Phone limit has been reached"),
    "email": ("email_limit", "Email limit has been reached"),
    "telegram": ("chat_id_limit", None),  # otpd's own: the message is not given by COMPAT.md
}
IP_LIMIT = ("ip_limit", "IP limit has been reached")

SEED_LIMITS = {"ips": [{"minutes": 10, "rate": 3}, {"minutes": 60, "rate": 10}],
               "phones": [{"minutes": 10, "rate": 3}]}

CHANNELS = ["sms", "call", "email", "telegram"]


def set_limits(o, channel, body):
    assert_ok(o.post("/limit/" + channel, body))


def get_limits(o, channel):
    r = o.get("/limit/" + channel)
    body = assert_json(r, 200)
    assert body["status"] is True, r.text
    return body["content"]


def assert_limit(resp, status_code, message):
    """400 {"status":false,"status_code":...,"message":...}, keys in exactly that order."""
    assert_json(resp, 400)
    got = pairs(resp)
    assert [k for k, _ in got] == ["status", "status_code", "message"], resp.text
    assert got[0] == ("status", False) and got[1] == ("status_code", status_code), resp.text
    if message is not None:
        assert got[2] == ("message", message), resp.text
    else:
        assert isinstance(got[2][1], str) and got[2][1], resp.text


def test_seed_limits_set_and_read_back(otpd):
    set_limits(otpd, "sms", SEED_LIMITS)
    assert get_limits(otpd, "sms") == SEED_LIMITS
    # another channel is untouched
    assert get_limits(otpd, "call") == {"ips": [], "phones": []}
    body = {"ips": [{"minutes": 10, "rate": 3}, {"minutes": 60, "rate": 10}],
            "emails": [{"minutes": 10, "rate": 3}]}
    set_limits(otpd, "email", body)
    assert get_limits(otpd, "email") == body
    body = {"ips": [{"minutes": 5, "rate": 2}], "chat_ids": [{"minutes": 15, "rate": 4}]}
    set_limits(otpd, "telegram", body)
    assert get_limits(otpd, "telegram") == body


@pytest.mark.parametrize("channel", CHANNELS)
def test_empty_limits_read_back_empty(shared_otpd, channel):
    assert get_limits(shared_otpd, channel) == {"ips": [], RULES_KEY[channel]: []}


@pytest.mark.parametrize("channel", CHANNELS)
def test_target_limit_reached(otpd, uniq, channel):
    set_limits(otpd, channel, {RULES_KEY[channel]: [{"minutes": 10, "rate": 2}]})
    target = uniq.target(channel)
    otpd.send_ok(channel, target, uniq.code())
    otpd.send_ok(channel, target, uniq.code())
    code = uniq.code()
    assert_limit(otpd.send(channel, target, code), *TARGET_LIMIT[channel])
    # the refused code was not stored
    assert otpd.check(channel, target, code) is False
    # another target is not limited
    otpd.send_ok(channel, uniq.target(channel), uniq.code())


@pytest.mark.parametrize("channel", CHANNELS)
def test_ip_limit_reached(otpd, uniq, channel):
    set_limits(otpd, channel, {"ips": [{"minutes": 10, "rate": 1}]})
    otpd.send_ok(channel, uniq.target(channel), uniq.code(), ip="10.0.0.1")
    assert_limit(otpd.send(channel, uniq.target(channel), uniq.code(), ip="10.0.0.1"),
                 *IP_LIMIT)
    # another ip is not limited
    otpd.send_ok(channel, uniq.target(channel), uniq.code(), ip="10.0.0.2")


def test_ip_required_when_channel_has_ip_rules(otpd, uniq):
    set_limits(otpd, "sms", {"ips": [{"minutes": 10, "rate": 5}]})
    r = otpd.send("sms", uniq.phone(), uniq.code())
    assert_missing(r, "ip")
    assert_missing(otpd.send("sms", uniq.phone(), uniq.code(), ip="   "), "ip")
    # ip comes after the channel's own fields
    assert_missing(otpd.post("/sms", {"phone": uniq.phone(), "password": "1", "message": "m"}),
                   "lifetime")
    otpd.send_ok("sms", uniq.phone(), uniq.code(), ip="1.2.3.4")
    # other channels have no ip rules: no ip needed there
    otpd.send_ok("call", uniq.phone(), uniq.code())
    # target rules alone do not require an ip
    set_limits(otpd, "email", {"emails": [{"minutes": 10, "rate": 5}]})
    otpd.send_ok("email", uniq.email(), uniq.code())
    # checks never need an ip
    phone, code = uniq.phone(), uniq.code()
    otpd.send_ok("sms", phone, code, ip="1.2.3.4")
    assert otpd.check("sms", phone, code) is True
    # clearing the ip rules drops the requirement
    set_limits(otpd, "sms", {"ips": []})
    otpd.send_ok("sms", uniq.phone(), uniq.code())


def test_sms_and_call_are_counted_apart(otpd, uniq):
    rule = {"phones": [{"minutes": 10, "rate": 1}], "ips": [{"minutes": 10, "rate": 1}]}
    set_limits(otpd, "sms", rule)
    set_limits(otpd, "call", rule)
    phone = uniq.phone()
    otpd.send_ok("sms", phone, uniq.code(), ip="10.1.1.1")
    otpd.send_ok("call", phone, uniq.code(), ip="10.1.1.1")
    assert_limit(otpd.send("sms", phone, uniq.code(), ip="10.1.1.2"), "phone_limit",
                 "Phone limit has been reached")
    assert_limit(otpd.send("call", phone, uniq.code(), ip="10.1.1.2"), "phone_limit",
                 "Phone limit has been reached")


def test_rejected_sends_do_not_count(otpd, uniq):
    set_limits(otpd, "sms", {"ips": [{"minutes": 10, "rate": 2}],
                             "phones": [{"minutes": 10, "rate": 1}]})
    p1, p2 = uniq.phone(), uniq.phone()
    # a send refused by validation does not count
    r = otpd.post("/sms", {"phone": p1, "password": "1", "message": "m", "lifetime": "x",
                           "ip": "10.9.9.9"})
    assert r.status_code == 400
    otpd.send_ok("sms", p1, uniq.code(), ip="10.9.9.9")          # ip 1/2, p1 1/1
    # refused by the phone rule: must not count for the ip rule
    for _ in range(3):
        assert_limit(otpd.send("sms", p1, uniq.code(), ip="10.9.9.9"), "phone_limit",
                     "Phone limit has been reached")
    otpd.send_ok("sms", p2, uniq.code(), ip="10.9.9.9")          # ip 2/2
    assert_limit(otpd.send("sms", uniq.phone(), uniq.code(), ip="10.9.9.9"), *IP_LIMIT)


def test_every_rule_applies(otpd, uniq):
    # two ip rules: the tighter one decides
    set_limits(otpd, "call", {"ips": [{"minutes": 60, "rate": 10}, {"minutes": 10, "rate": 2}]})
    for _ in range(2):
        otpd.send_ok("call", uniq.phone(), uniq.code(), ip="192.0.2.7")
    assert_limit(otpd.send("call", uniq.phone(), uniq.code(), ip="192.0.2.7"), *IP_LIMIT)


def test_ip_is_compared_as_an_address(otpd, uniq):
    set_limits(otpd, "sms", {"ips": [{"minutes": 10, "rate": 1}]})
    otpd.send_ok("sms", uniq.phone(), uniq.code(), ip=" 10.0.0.5 ")
    assert_limit(otpd.send("sms", uniq.phone(), uniq.code(), ip="10.0.0.5"), *IP_LIMIT)


@pytest.mark.parametrize("first,second,expected", [
    ("phones", "ips", "phone_limit"),
    ("ips", "phones", "ip_limit"),
])
def test_first_rule_set_decides_the_status_code(otpd, uniq, first, second, expected):
    set_limits(otpd, "sms", {first: [{"minutes": 10, "rate": 1}]})
    set_limits(otpd, "sms", {second: [{"minutes": 10, "rate": 1}]})
    phone = uniq.phone()
    otpd.send_ok("sms", phone, uniq.code(), ip="10.3.3.3")
    r = otpd.send("sms", phone, uniq.code(), ip="10.3.3.3")
    msg = "Phone limit has been reached" if expected == "phone_limit" else IP_LIMIT[1]
    assert_limit(r, expected, msg)


def test_empty_list_clears_and_absent_key_leaves(otpd, uniq):
    set_limits(otpd, "sms", SEED_LIMITS)
    # phones replaced, ips left alone
    set_limits(otpd, "sms", {"phones": [{"minutes": 30, "rate": 1}]})
    assert get_limits(otpd, "sms") == {"ips": SEED_LIMITS["ips"],
                                       "phones": [{"minutes": 30, "rate": 1}]}
    phone = uniq.phone()
    otpd.send_ok("sms", phone, uniq.code(), ip="10.0.0.1")
    assert_limit(otpd.send("sms", phone, uniq.code(), ip="10.0.0.1"), "phone_limit",
                 "Phone limit has been reached")
    # [] clears the phone rules
    set_limits(otpd, "sms", {"phones": []})
    assert get_limits(otpd, "sms") == {"ips": SEED_LIMITS["ips"], "phones": []}
    otpd.send_ok("sms", phone, uniq.code(), ip="10.0.0.1")
    # an empty body changes nothing
    set_limits(otpd, "sms", {})
    assert get_limits(otpd, "sms") == {"ips": SEED_LIMITS["ips"], "phones": []}
    set_limits(otpd, "sms", {"ips": []})
    assert get_limits(otpd, "sms") == {"ips": [], "phones": []}


# Each bad item as JSON text, and a word its error message must hold besides the item.
BAD_ITEMS = [
    ('{"minutes":"x","rate":1}', "minutes"),
    ('{"minutes":10}', "rate"),
    ('{"rate":3}', "minutes"),
    ('{"minutes":0,"rate":3}', "minutes"),
    ('{"minutes":-10,"rate":3}', "minutes"),
    ('{"minutes":10,"rate":-1}', "rate"),
    ('{"minutes":10,"rate":"many"}', "rate"),
    ('{"minutes":[10],"rate":3}', "minutes"),
    ('{"minutes":10,"rate":true}', "rate"),
    ('{"minutes":99999999999999999999,"rate":3}', None),
    ('5', None),
    ('"10/3"', None),
    ('[10,3]', None),
    ('null', None),
    ('{}', None),
]


@pytest.mark.parametrize("item,word", BAD_ITEMS)
def test_bad_item_rejects_the_whole_request(shared_otpd, item, word):
    before = get_limits(shared_otpd, "call")
    text = ('{"ips":[{"minutes":10,"rate":3}],"phones":[{"minutes":10,"rate":3},%s]}' % item)
    r = shared_otpd.request("POST", "/limit/call", data=text)
    if item.startswith('{"minutes":9999'):
        # a number beyond any integer type: a 400 (the JSON layer may name it), never 500
        assert_error(r, 400)
    else:
        err = assert_error(r, 400, field="phones[1]")
        if word is not None:
            assert word in err["message"], r.text
    # nothing applied: neither the valid ips list nor the valid first phone rule
    assert get_limits(shared_otpd, "call") == before


@pytest.mark.parametrize("value", [{"minutes": 10, "rate": 3}, "[]", 5, True])
def test_rule_list_not_an_array_rejected(shared_otpd, value):
    before = get_limits(shared_otpd, "email")
    r = shared_otpd.post("/limit/email", {"ips": [{"minutes": 1, "rate": 1}], "emails": value})
    assert_error(r, 400, field="emails")
    assert get_limits(shared_otpd, "email") == before


def test_valid_request_applied_atomically(otpd, uniq):
    set_limits(otpd, "telegram", {"ips": [{"minutes": 10, "rate": 1}],
                                  "chat_ids": [{"minutes": 10, "rate": 1}]})
    r = otpd.post("/limit/telegram", {"ips": [], "chat_ids": [{"minutes": 10, "rate": 1}, {}]})
    assert_error(r, 400, field="chat_ids[1]")
    # the ips list was not cleared by the refused request
    assert get_limits(otpd, "telegram")["ips"] == [{"minutes": 10, "rate": 1}]
    assert_missing(otpd.send("telegram", uniq.chat_id(), uniq.code()), "ip")


def test_rules_kept_in_order_they_were_set(otpd):
    rules = [{"minutes": m, "rate": r} for m, r in [(60, 10), (1, 1), (30, 5), (5, 2)]]
    set_limits(otpd, "sms", {"phones": rules})
    assert get_limits(otpd, "sms")["phones"] == rules


@pytest.mark.parametrize("kind", ["ips", "phones"])
def test_concurrent_sends_respect_the_rate(otpd, uniq, kind):
    rate = 5
    set_limits(otpd, "sms", {kind: [{"minutes": 10, "rate": rate}]})
    phone = uniq.phone()
    n = 20
    answers = [None] * n

    def worker(i):
        target = phone if kind == "phones" else uniq.phone()
        answers[i] = otpd.send("sms", target, uniq.code(), ip="198.51.100.9")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 400]
    assert len(ok) == rate, [r.text for r in answers]
    assert len(refused) == n - rate, [r.text for r in answers]
    want = "ip_limit" if kind == "ips" else "phone_limit"
    assert all(r.json()["status_code"] == want for r in refused)


def test_consumed_and_voided_codes_still_count(otpd_factory, uniq):
    # the window counts successful sends, whatever became of their codes
    o = otpd_factory(env={"OTPD_CHECK_CONSUMES": "true", "OTPD_MAX_CHECK_ATTEMPTS": "1"})
    set_limits(o, "sms", {"phones": [{"minutes": 10, "rate": 1}]})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("sms", phone, code)
    assert o.check("sms", phone, code) is True  # consumed
    assert_limit(o.send("sms", phone, uniq.code()), "phone_limit", "Phone limit has been reached")
    other = uniq.phone()
    o.send_ok("sms", other, uniq.code())
    assert o.check("sms", other, uniq.code()) is False  # voided by the attempt limit
    assert_limit(o.send("sms", other, uniq.code()), "phone_limit", "Phone limit has been reached")


def test_expired_codes_still_count_after_the_janitor_ran(otpd_factory, uniq):
    # a code expires long before the window ends; purging it must not forget the send
    o = otpd_factory(env={"OTPD_JANITOR_INTERVAL": "1"})
    set_limits(o, "call", {"phones": [{"minutes": 10, "rate": 1}],
                           "ips": [{"minutes": 10, "rate": 1}]})
    phone, code = uniq.phone(), uniq.code()
    o.send_ok("call", phone, code, lifetime=1, ip="203.0.113.5")
    deadline = time.monotonic() + 5.0
    while o.check("call", phone, code):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(3.0)  # time is the subject: three janitor runs after the expiry
    assert_limit(o.send("call", phone, uniq.code(), ip="203.0.113.6"), "phone_limit",
                 "Phone limit has been reached")
    assert_limit(o.send("call", uniq.phone(), uniq.code(), ip="203.0.113.5"), *IP_LIMIT)


def test_limit_endpoints_ignore_other_parameters(otpd):
    # COMPAT.md: a client of the old service must not notice the switch; the old service
    # read "ips" and "phones" and nothing else, so other parameters (a cache-buster in
    # the query string, a comment in the body) did not make a request fail
    r = otpd.post("/limit/sms", {"phones": [{"minutes": 10, "rate": 3}], "comment": "crm"},
                  params={"_": "1700000000"})
    assert_ok(r)
    assert get_limits(otpd, "sms")["phones"] == [{"minutes": 10, "rate": 3}]
    assert_ok(otpd.post("/limit/email", {"ips": [], "phones": []}))
