#!/usr/bin/python3
"""seed_native.py URL TOKEN N - store the verifications of the native-verify scenario:
POST /otp/send for the N phones +7999xxxxxxxx with the codes of lib.lua's seeded_code()
as their own codes (otp_code), over one keep-alive connection. Exits non-zero unless
every answer is a pending verification."""
import http.client
import json
import sys
import urllib.parse


def main():
    url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + token}
    for i in range(n):
        phone = "+7999%08d" % i
        code = "%05d" % ((i * 7919 + 13) % 100000)
        body = json.dumps({"recipient": phone, "channel": "sms", "otp_code": code})
        conn.request("POST", "/otp/send", body, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or json.loads(data).get("status") != "pending":
            sys.exit("seed: POST /otp/send for %s answered %d %r" % (phone, r.status, data[:200]))
    conn.close()


if __name__ == "__main__":
    main()
