#!/bin/sh
# Container entry point: run /opt/setup.sh once on first start (as the old image did),
# then become otpd with the arguments given (none: serve).
#
# The image runs as the user otpd. Started as root instead (docker run --user root,
# for a setup.sh that needs root), it runs setup.sh as root and then drops to otpd
# with setpriv before otpd starts, so otpd itself never runs as root.
# "Once" is recorded by a marker in OTPD_DATA_DIR: with a volume there, once per
# volume; without one, once per container. A setup.sh that fails stops the start and
# runs again at the next one.
# ENTRYPOINT_SETUP and ENTRYPOINT_OTPD exist for the tests (tests/api/test_deploy.py).
set -eu
setup="${ENTRYPOINT_SETUP:-/opt/setup.sh}"
otpd="${ENTRYPOINT_OTPD:-/usr/local/bin/otpd}"
data="${OTPD_DATA_DIR:-/var/lib/otpd}"
marker="$data/.setup-done"

if [ -f "$setup" ] && [ ! -f "$marker" ]; then
  sh "$setup"
  mkdir -p "$data"
  : > "$marker"
fi

if [ "$(id -u)" = 0 ] && id otpd >/dev/null 2>&1; then
  # the data directory was made by root above: hand it to otpd
  chown otpd:otpd "$data" "$marker" 2>/dev/null || true
  exec setpriv --reuid=otpd --regid=otpd --init-groups -- "$otpd" "$@"
fi
exec "$otpd" "$@"
