#!/usr/bin/python3
"""seed.py URL N - store the codes of the check scenario: POST /sms for the N phones
7999xxxxxxxx with the codes of lib.lua's seeded_code(), lifetime one hour, over one
keep-alive connection. Exits non-zero unless every answer is {"status":true}."""
import http.client
import json
import sys
import urllib.parse


def main():
    url, n = sys.argv[1], int(sys.argv[2])
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    for i in range(n):
        phone = "7999%08d" % i
        code = "%05d" % ((i * 7919 + 13) % 100000)
        body = json.dumps({"phone": phone, "password": code, "message": "Your code is " + code,
                           "lifetime": 3600})
        conn.request("POST", "/sms", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or json.loads(data).get("status") is not True:
            sys.exit("seed: POST /sms for %s answered %d %r" % (phone, r.status, data[:200]))
    conn.close()


if __name__ == "__main__":
    main()
