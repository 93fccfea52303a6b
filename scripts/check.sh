#!/usr/bin/env bash
# make check: build with warnings as errors, lint (C, and the Dockerfile, OpenAPI and man
# page through scripts/lint.sh), run the unit and API tests on SQLite
# and on a throwaway PostgreSQL, then again under ASan+UBSan. Exits non-zero on the
# first failure. Quiet where it can be; the test runners print their own summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
BUILD=${BUILD:-build}
ASAN_BUILD=${ASAN_BUILD:-build-asan}

step() { printf '\n==> %s\n' "$*"; }

PGDIR=$(mktemp -d /tmp/otpd-pg.XXXXXX)
cleanup() { bash scripts/pg-test-server.sh stop "$PGDIR" >/dev/null 2>&1 || true; rm -rf "$PGDIR"; }
trap cleanup EXIT

step "build ($BUILD, -Werror)"
[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" -Dwerror=true >/dev/null
ninja -C "$BUILD"

step "cppcheck"
cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance \
  --std=c11 --inline-suppr -I src --suppress=missingIncludeSystem src

step "lint: Dockerfile, OpenAPI (Redocly), man page"
bash scripts/lint.sh

step "PostgreSQL for the tests"
bash scripts/pg-test-server.sh start "$PGDIR"
eval "$(bash scripts/pg-test-server.sh env "$PGDIR")"

step "unit tests"
meson test -C "$BUILD" --print-errorlogs

step "API tests (SQLite and PostgreSQL)"
OTPD_BIN="$BUILD/otpd" $PY -m pytest -q -p no:cacheprovider tests/fakes tests/api

step "sanitizer build ($ASAN_BUILD: address,undefined)"
[ -f "$ASAN_BUILD/build.ninja" ] || meson setup "$ASAN_BUILD" -Dwerror=true \
  -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug >/dev/null
ninja -C "$ASAN_BUILD"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

step "unit tests under sanitizers"
meson test -C "$ASAN_BUILD" --print-errorlogs

step "API tests under sanitizers"
OTPD_BIN="$ASAN_BUILD/otpd" $PY -m pytest -q -p no:cacheprovider tests/api

step "fuzz targets over their seed corpora (clang, ASan+UBSan)"
# strict_string_checks is off here: the harnesses use strndup on raw fuzz bytes on purpose
# (it stops at a NUL, as a C string from libmicrohttpd would), which that check forbids.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 bash scripts/fuzz.sh --smoke

step "all checks passed"
