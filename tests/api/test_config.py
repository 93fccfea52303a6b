"""Configuration (COMPAT.md "Environment and start-up" and the defaults of "Delivery as the
old service did it"): `otpd --check-config`, bad values all reported with exit 2, the old
container's variables, and the README documenting every variable of `otpd --help`."""

import re

import pytest

from otpdlib import REPO, run_otpd

SECRETS = {
    "HTTP_AUTH_PASSWORD": "auth-Pw-123",
    "PG_PASSWORD": "pg-Pw-456",
    "OTPD_SECRET_KEY": "0123456789abcdef" * 4,
    "OTP_TELEGRAM_APP_TOKEN": "app-Token-789",
    "OTPD_TELEGRAM_BOT_TOKEN": "123456:bot-Token-abc",
    "OTPD_TELEGRAM_WEBHOOK_SECRET": "hook-Secret-def",
    "OTPD_SMTP_PASSWORD": "smtp-Pw-ghi",
    "OTPD_TWILIO_AUTH_TOKEN": "twilio-Token-jkl",
    "OTPD_WHATSAPP_TOKEN": "wa-Token-mno",
    "OTPD_WEBHOOK_SECRET": "webhook-Secret-pqr",
}

# COMPAT.md defaults (and the documented defaults of the rules otpd adds).
DEFAULTS = {
    "PG_PORT": "5432",
    "PG_SCHEMA": "public",
    "PHP_PM_MAX_CHILDREN": "10",
    "OTP_QUEUE_URL": "http://queue",
    "OTP_SMS_URL": "http://sms",
    "OTP_SMS_WORKER": "sms",
    "OTP_CALL_URL": "http://sms",
    "OTP_CALL_WORKER": "sms",
    "OTP_EMAIL_URL": "http://email",
    "OTP_EMAIL_WORKER": "email",
    "OTP_TELEGRAM_URL": "http://telegram:8080",
    "OTP_TELEGRAM_WORKER": "telegram",
    "OTPD_MAX_CHECK_ATTEMPTS": "5",
    "OTPD_CHECK_CONSUMES": "false",
    "OTPD_PASSWORD_READBACK": "false",
    "OTPD_MAX_LIFETIME": "86400",
    "OTPD_TELEGRAM_WEBHOOK_CODE_LENGTH": "6",
    "OTPD_TELEGRAM_WEBHOOK_LIFETIME": "300",
    "DUMMY": "false",
}


def settings(stdout):
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def help_variables():
    cp = run_otpd(["--help"])
    assert cp.returncode == 0, cp.stderr
    names = []
    in_table = False
    for line in cp.stdout.splitlines():
        if line.strip().lower().startswith("environment variables"):
            in_table = True
            continue
        m = re.match(r"^\s+([A-Z][A-Z0-9_]{2,})\s", line)
        if in_table and m:
            names.append(m.group(1))
    assert len(names) > 20, cp.stdout
    return names


def test_check_config_prints_settings_with_secrets_hidden(tmp_path):
    env = dict(SECRETS)
    env.update({"HTTP_AUTH_USERNAME": "otp-user", "OTPD_LISTEN": "0.0.0.0:9999",
                "OTPD_DATA_DIR": str(tmp_path / "d"), "OTPD_MAX_CHECK_ATTEMPTS": "7"})
    cp = run_otpd(["--check-config"], env)
    assert cp.returncode == 0, cp.stderr
    s = settings(cp.stdout)
    for name, value in SECRETS.items():
        assert s.get(name) == "(set)", f"{name}: {s.get(name)!r}"
        assert value not in cp.stdout and value not in cp.stderr, name
    assert s["HTTP_AUTH_USERNAME"] == "otp-user"
    assert s["OTPD_LISTEN"] == "0.0.0.0:9999"
    assert s["OTPD_MAX_CHECK_ATTEMPTS"] == "7"
    # nothing was started or created
    assert not (tmp_path / "d").exists()


def test_check_config_lists_every_variable():
    cp = run_otpd(["--check-config"])
    assert cp.returncode == 0, cp.stderr
    s = settings(cp.stdout)
    missing = [n for n in help_variables() if n not in s]
    assert not missing, f"--check-config does not print: {missing}"


def test_defaults_are_the_old_services(tmp_path):
    cp = run_otpd(["--check-config"])
    assert cp.returncode == 0, cp.stderr
    s = settings(cp.stdout)
    wrong = {k: (s.get(k), v) for k, v in DEFAULTS.items() if s.get(k) != v}
    assert not wrong, f"(got, expected): {wrong}"


def test_php_pm_max_children_sizes_the_thread_pool():
    s = settings(run_otpd(["--check-config"]).stdout)
    assert s["OTPD_THREADS"] == "10"
    s = settings(run_otpd(["--check-config"], {"PHP_PM_MAX_CHILDREN": "7"}).stdout)
    assert s["OTPD_THREADS"] == "7"
    s = settings(run_otpd(["--check-config"], {"PHP_PM_MAX_CHILDREN": "7",
                                                "OTPD_THREADS": "3"}).stdout)
    assert s["OTPD_THREADS"] == "3"


def test_php_pm_max_requests_accepted_ignored_and_logged(otpd_factory):
    o = otpd_factory(env={"PHP_PM_MAX_REQUESTS": "500"})
    o.wait_log(r"PHP_PM_MAX_REQUESTS")
    assert o.get("/health").status_code == 200


BAD = {
    "OTPD_LISTEN": "nope",
    "OTPD_MAX_CHECK_ATTEMPTS": "-1",
    "DUMMY": "maybe",
    "OTPD_MAX_BODY_BYTES": "12abc",
    "PG_PORT": "70000",
    "OTPD_PROVIDER": "carrier-pigeon",
    "OTPD_LOG_LEVEL": "loud",
    "OTPD_MAX_LIFETIME": "0",
    "OTPD_SECRET_KEY": "not-hex",
    "OTPD_CHECK_CONSUMES": "sometimes",
}


def test_bad_values_all_reported_exit_2():
    cp = run_otpd(["--check-config"], BAD)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    unreported = [n for n in BAD if n not in cp.stderr]
    assert not unreported, f"not reported: {unreported}\n{cp.stderr}"
    # a bad secret's value is not echoed back
    assert "not-hex" not in cp.stderr


@pytest.mark.parametrize("name,value", [("OTPD_LISTEN", "nope"), ("OTPD_LISTEN", "127.0.0.1:0"),
                                        ("OTPD_LISTEN", "127.0.0.1:99999"),
                                        ("OTPD_MAX_CHECK_ATTEMPTS", "-1"),
                                        ("OTPD_MAX_CHECK_ATTEMPTS", "5x"),
                                        ("DUMMY", "maybe"), ("PHP_PM_MAX_CHILDREN", "0")])
def test_each_bad_value_exit_2(name, value):
    cp = run_otpd(["--check-config"], {name: value})
    assert cp.returncode == 2, (name, value, cp.stdout, cp.stderr)
    assert name in cp.stderr, cp.stderr


def test_bad_config_refuses_to_serve(tmp_path):
    env = dict(BAD)
    env["OTPD_DATA_DIR"] = str(tmp_path / "d")
    cp = run_otpd([], env, timeout=60)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    unreported = [n for n in BAD if n not in cp.stderr]
    assert not unreported, f"not reported: {unreported}\n{cp.stderr}"
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["true", "false", "TRUE", "1", "0"])
def test_boolean_spellings_accepted(value):
    cp = run_otpd(["--check-config"], {"DUMMY": value})
    assert cp.returncode == 0, cp.stderr
    want = "true" if value.lower() in ("true", "1") else "false"
    assert settings(cp.stdout)["DUMMY"] == want


def test_help_and_version_and_unknown_command():
    cp = run_otpd(["--help"])
    assert cp.returncode == 0 and "OTPD_LISTEN" in cp.stdout
    cp = run_otpd(["--version"])
    assert cp.returncode == 0 and cp.stdout.strip()
    cp = run_otpd(["--no-such-flag"])
    assert cp.returncode == 2, cp


def test_readme_documents_every_variable():
    readme = REPO / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text(errors="replace")
    missing = [n for n in help_variables()
               if not re.search(r"(?<![A-Z0-9_])" + re.escape(n) + r"(?![A-Z0-9_])", text)]
    assert not missing, f"README.md does not mention: {', '.join(missing)}"
