#!/usr/bin/env bash
# Installs the Debian packages otpd needs to build, test and run, only when some are
# missing: quiet and fast when everything is already there. Needs root (or sudo) to
# install; prints what is missing otherwise.
set -euo pipefail

PKGS=(
  build-essential pkg-config meson ninja-build
  libmicrohttpd-dev libjansson-dev libsqlite3-dev libsodium-dev
  libcurl4-openssl-dev libpq-dev libcmocka-dev
  python3 python3-pytest python3-requests python3-yaml
  postgresql sqlite3 curl openssl
)
# Extra tools for `make check` / `make bench` / fuzzing.
case "${1:-}" in
  --check) PKGS+=(clang libclang-rt-14-dev cppcheck) ;;
  --bench) PKGS+=(wrk nginx-light php-fpm php-sqlite3 php-pgsql) ;;
esac

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
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
