#!/bin/sh
# Container entry point: run /opt/setup.sh once on first start (as the old image did),
# then become otpd. Port 80 needs root or CAP_NET_BIND_SERVICE; otpd itself keeps its
# data in OTPD_DATA_DIR.
set -eu
marker="${OTPD_DATA_DIR:-/var/lib/otpd}/.setup-done"
if [ -f /opt/setup.sh ] && [ ! -f "$marker" ]; then
  sh /opt/setup.sh
  mkdir -p "$(dirname "$marker")" && : > "$marker"
fi
exec /usr/local/bin/otpd "$@"
