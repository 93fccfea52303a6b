#!/usr/bin/env bash
# Installs the Debian packages otpd needs, only when some are missing: quiet and fast
# when everything is already there. Needs root (or sudo) to install; prints what is
# missing otherwise.
#   scripts/deps.sh           what building and running otpd need (make build/install)
#   scripts/deps.sh --check   and what `make check` needs: test servers, linters, ...
#   scripts/deps.sh --bench   and what `make bench` needs
# `make install` runs the first form only: a target host never gets the test suite's
# PostgreSQL, Python or Node.js.
set -euo pipefail

PKGS=(
  build-essential pkg-config meson ninja-build python3
  libmicrohttpd-dev libjansson-dev libsqlite3-dev libsodium-dev
  libcurl4-openssl-dev libpq-dev libgnutls28-dev libsystemd-dev
)
# Extra tools for `make check` / `make bench` / fuzzing.
CHECK_PKGS=(
  libcmocka-dev python3-pytest python3-requests python3-yaml
  postgresql sqlite3 curl openssl
  clang libclang-rt-14-dev cppcheck
  systemd mandoc nodejs
)
case "${1:-}" in
  --check) PKGS+=("${CHECK_PKGS[@]}") ;;
  --bench) PKGS+=("${CHECK_PKGS[@]}" wrk nginx-light php-fpm php-sqlite3 php-pgsql) ;;
  "") ;;
  *) echo "usage: scripts/deps.sh [--check|--bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# npm: Debian's package, unless a Node.js that brings its own npm is installed
if [ "${1:-}" != "" ] && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deps: missing packages and not root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
