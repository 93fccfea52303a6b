#!/usr/bin/env bash
# make check's linters of what is not C: the Dockerfile (dockerfilelint), the OpenAPI
# description (Redocly CLI, a second validator beside tests/api/test_openapi.py), the
# man page (mandoc). The npm tools are installed from tools/lint/package-lock.json with
# `npm ci` and run with the machine's Node.js; scripts/deps.sh --check installs Node.js.
set -euo pipefail
cd "$(dirname "$0")/.."
LINT=tools/lint

if [ ! -x "$LINT/node_modules/.bin/redocly" ] || [ ! -x "$LINT/node_modules/.bin/dockerfilelint" ] ||
   [ "$LINT/package-lock.json" -nt "$LINT/node_modules/.package-lock.json" ]; then
  (cd "$LINT" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi

echo "dockerfilelint deploy/Dockerfile"
"$LINT/node_modules/.bin/dockerfilelint" deploy/Dockerfile

echo "redocly lint docs/openapi.yaml"
# (without its boxed banner about Node.js versions; pipefail keeps redocly's status)
"$LINT/node_modules/.bin/redocly" lint --config "$LINT/redocly.yaml" --format=stylish \
  docs/openapi.yaml 2>&1 | grep -v '[║╔╚]' | grep -v '^$'

echo "mandoc -T lint docs/man/otpd.8"
mandoc -T lint -W warning docs/man/otpd.8
