"""What deploy/ and `make install` hand an operator (issue 12): the systemd unit's
sandbox score, the install tree, the container entry point, the image's Dockerfile and
build context, the man page. No Docker engine is needed: the entry point runs as a
script against the built binary, the Dockerfile is read (and linted in make check)."""

import os
import re
import shutil
import subprocess

import pytest

from otpdlib import REPO, base_env, otpd_bin, require_bin

UNIT = REPO / "deploy" / "otpd.service"
MAX_EXPOSURE = 2.0


def test_unit_exposure_is_at_most_2():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd, "
                    "scripts/deps.sh --check installs it)")
    cp = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(UNIT)],
                        capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for otpd\.service: ([0-9.]+)", cp.stdout)
    if m is None and "offline" in cp.stderr.lower() and cp.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run --offline here: {cp.stderr.strip()}")
    assert m, (cp.returncode, cp.stdout[-2000:], cp.stderr)
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{cp.stdout}"


def unit_settings():
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_is_a_notify_service_with_reload_watchdog_and_credentials():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] and s["NotifyAccess"] == ["main"]
    assert any(v.startswith("OTPD_SECRET_KEY:") for v in s["LoadCredential"])
    # the TLS credentials are documented in the unit, ready to uncomment
    text = UNIT.read_text()
    assert "#LoadCredential=OTPD_TLS_KEY:" in text and "#LoadCredential=OTPD_TLS_CERT:" in text
    assert s["DynamicUser"] == ["yes"]


def test_install_tree(tmp_path):
    """meson install of the build under test into a DESTDIR: the binary, the unit
    (pointing at the installed binary), the man page, the example environment; nothing
    of the tests."""
    build = otpd_bin().parent
    assert (build / "build.ninja").exists(), f"{build} is not a meson build directory"
    intro = subprocess.run(["meson", "introspect", "--buildoptions", str(build)],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    import json
    opts = {o["name"]: o["value"] for o in json.loads(intro)}
    prefix, sbindir, sysconfdir = opts["prefix"], opts["sbindir"], opts["sysconfdir"]
    dest = tmp_path / "dest"
    env = dict(base_env(), DESTDIR=str(dest))
    # the unit is generated at build time like the binary
    subprocess.run(["ninja", "-C", str(build), "otpd", "otpd.service"], check=True,
                   capture_output=True, timeout=900, env=env)
    subprocess.run(["meson", "install", "-C", str(build), "--no-rebuild"], check=True,
                   capture_output=True, timeout=300, env=env)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    root = prefix.lstrip("/")
    etc = sysconfdir.lstrip("/") if sysconfdir.startswith("/") else f"{root}/{sysconfdir}"
    want = [f"{root}/{sbindir}/otpd", f"{root}/lib/systemd/system/otpd.service",
            f"{root}/share/man/man8/otpd.8", f"{etc}/otpd/otpd.env.example"]
    assert sorted(want) == files, files
    binary = dest / root / sbindir / "otpd"
    assert os.access(binary, os.X_OK)
    unit = (dest / root / "lib/systemd/system/otpd.service").read_text()
    assert f"ExecStart={prefix}/{sbindir}/otpd\n" in unit
    assert f"ExecStartPre={prefix}/{sbindir}/otpd --check-config\n" in unit
    cp = subprocess.run([str(binary), "-V"], capture_output=True, text=True, timeout=30,
                        env=base_env())
    assert cp.returncode == 0 and cp.stdout.startswith("otpd "), cp


def test_make_install_never_installs_test_dependencies():
    deps = (REPO / "scripts" / "deps.sh").read_text()
    base = re.search(r"^PKGS=\((.*?)\)", deps, re.S | re.M).group(1).split()
    for test_only in ("postgresql", "python3-pytest", "python3-requests", "libcmocka-dev",
                      "nodejs", "npm", "cppcheck", "clang", "mandoc"):
        assert test_only not in base, test_only
    make = (REPO / "Makefile").read_text()
    install = re.search(r"^install:(.*?)\n\n", make, re.S | re.M).group(0)
    assert "--check" not in install and "--bench" not in install


def test_man_page_renders():
    page = REPO / "docs" / "man" / "otpd.8"
    mandoc = shutil.which("mandoc")
    if mandoc:
        cp = subprocess.run([mandoc, "-T", "lint", "-W", "warning", str(page)],
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stdout + cp.stderr
    man = shutil.which("man")
    assert man or mandoc, "neither man nor mandoc (scripts/deps.sh --check)"
    cmd = [man, "-l", str(page)] if man else [mandoc, "-T", "utf8", str(page)]
    env = dict(base_env(), MANPAGER="cat", PAGER="cat", MANWIDTH="80")
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode == 0, cp.stderr
    text = re.sub(r".\x08", "", cp.stdout)
    for word in ("SYNOPSIS", "--check-config", "SIGHUP", "OTPD_LISTEN", "EXIT STATUS"):
        assert word in text, word
    # every command of --help is in the page
    helptext = subprocess.run([str(require_bin()), "--help"], capture_output=True,
                              text=True, timeout=30).stdout
    for cmd_name in re.findall(r"^  (\S+?)(?:,| )", helptext.split("Environment")[0], re.M):
        assert cmd_name in text, cmd_name


# ---- the container image -----------------------------------------------------------------

def dockerfile():
    return (REPO / "deploy" / "Dockerfile").read_text()


def test_dockerfile_runs_as_otpd_with_a_working_healthcheck_and_pinned_base():
    d = dockerfile()
    assert re.search(r"^USER otpd$", d, re.M)
    hc = re.search(r"^HEALTHCHECK .*$", d, re.M).group(0)
    assert '"/usr/local/bin/otpd", "health"' in hc and "/dev/tcp" not in hc
    bases = re.findall(r"^FROM (\S+)", d, re.M)
    assert len(bases) == 2 and bases[0] == bases[1], bases
    assert re.fullmatch(r"debian:\d+\.\d+-slim(@sha256:[0-9a-f]{64})?", bases[0]), bases
    assert "EXPOSE 80" in d and "OTPD_LISTEN=0.0.0.0:80" in d
    assert "cap_net_bind_service" in d  # port 80 without root


def test_dockerignore_keeps_secrets_and_build_trees_out():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in ("build", "data", "**/secret.key", "node_modules", ".git"):
        assert pattern in lines, pattern


def test_compose_has_volume_restart_and_one_published_port():
    import yaml
    c = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    s = c["services"]
    assert "pgdata" in c["volumes"]
    assert any(v.startswith("pgdata:") for v in s["db"]["volumes"])
    assert all(svc.get("restart") == "unless-stopped" for svc in s.values())
    assert "ports" not in s["otpd"], "a fixed port clashes with --scale otpd=N"
    published = [name for name, svc in s.items() if svc.get("ports")]
    assert published == ["proxy"]
    assert s["otpd"]["depends_on"]["db"]["condition"] == "service_healthy"


def run_entrypoint(tmp_path, args, setup=None, extra=None):
    env = base_env()
    env.update({"ENTRYPOINT_OTPD": str(otpd_bin()), "OTPD_DATA_DIR": str(tmp_path / "data"),
                "ENTRYPOINT_SETUP": str(setup or tmp_path / "no-setup.sh")})
    env.update(extra or {})
    return subprocess.run(["sh", str(REPO / "deploy" / "entrypoint.sh")] + args, env=env,
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_runs_setup_once_then_becomes_otpd(tmp_path):
    setup = tmp_path / "setup.sh"
    runs = tmp_path / "runs"
    setup.write_text(f'echo ran >> "{runs}"\n')
    for _ in range(3):
        cp = run_entrypoint(tmp_path, ["-V"], setup)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("otpd "), cp.stdout   # exec'd with the arguments
    assert runs.read_text() == "ran\n", "setup.sh must run exactly once"
    assert (tmp_path / "data" / ".setup-done").exists()


def test_entrypoint_failing_setup_stops_and_runs_again(tmp_path):
    setup = tmp_path / "setup.sh"
    setup.write_text("echo broken >&2; exit 3\n")
    cp = run_entrypoint(tmp_path, ["-V"], setup)
    assert cp.returncode != 0 and "otpd " not in cp.stdout
    assert not (tmp_path / "data" / ".setup-done").exists()
    setup.write_text("exit 0\n")
    assert run_entrypoint(tmp_path, ["-V"], setup).returncode == 0
    assert (tmp_path / "data" / ".setup-done").exists()


def test_entrypoint_without_setup_script_passes_exit_status(tmp_path):
    cp = run_entrypoint(tmp_path, ["migrate", "--dry-run"])
    assert cp.returncode == 2, cp
    assert not (tmp_path / "data").exists()
