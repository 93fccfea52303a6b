"""The official SDKs of the APIs otpd speaks, as test clients.

The SDKs are npm packages pinned by tests/sdk/package-lock.json and run with Debian's
nodejs. `ensure_installed()` runs `npm ci` there once (when node_modules is missing or
older than the lockfile), under a file lock so parallel test processes do not race.
`run(script, env)` runs tests/sdk/<script> with node and returns the CompletedProcess;
scripts speak to the otpd whose base URL and credentials are given in `env`, print one
JSON line per scenario, and exit non-zero when a scenario fails.
"""
import fcntl
import json
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SDK_DIR = os.path.join(ROOT, "tests", "sdk")


def node():
    exe = shutil.which("node") or shutil.which("nodejs")
    if exe is None:
        raise RuntimeError("node is missing: scripts/deps.sh --check installs nodejs")
    return exe


def ensure_installed():
    lock = os.path.join(SDK_DIR, "package-lock.json")
    stamp = os.path.join(SDK_DIR, "node_modules", ".package-lock.json")
    with open(os.path.join(SDK_DIR, ".install.lock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is missing: scripts/deps.sh --check installs it")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                        "--loglevel=error"], cwd=SDK_DIR, check=True, timeout=600)


def run(script, env, timeout=120):
    """Run tests/sdk/<script>; `env` adds to the environment (str() of each value)."""
    ensure_installed()
    full = dict(os.environ)
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run([node(), os.path.join(SDK_DIR, script)], cwd=SDK_DIR, env=full,
                          capture_output=True, text=True, timeout=timeout)


def results(proc):
    """The JSON lines a script printed, as a list of dicts (other lines are ignored)."""
    out = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
