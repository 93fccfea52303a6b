#!/usr/bin/env bash
# pg-test-server.sh - a throwaway PostgreSQL cluster for tests, in a directory of its own.
#
#   pg-test-server.sh start DIR   initdb (once) and start; idempotent, quiet when fine
#   pg-test-server.sh stop DIR    stop it (fast shutdown); quiet when not running
#   pg-test-server.sh env DIR     print `export OTPD_TEST_PG_*=...` lines for eval
#
# The cluster listens on a unix socket in DIR and on 127.0.0.1 at a free port, trusts
# every local connection (test use only: never expose it), and has a database
# `otpd_test`; the superuser is `postgres`. PostgreSQL refuses to run as root, so when
# run as root the server runs as the `postgres` system user of Debian's postgresql
# package (DIR is chown'd to it). Binaries are taken from /usr/lib/postgresql/*/bin
# (the newest), or from PATH. Any failure prints why and exits non-zero.
set -euo pipefail

PGT_USER=postgres
PGT_DB=otpd_test

die() { echo "pg-test-server: $*" >&2; exit 1; }

usage() { die "usage: $0 start|stop|env DIR"; }

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
dir=${dir%/}
data="$dir/data"

find_bindir() {
	local d best=""
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] || continue
		# versions are plain integers (>= 10): keep the highest
		if [ -z "$best" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$best")")" ]; then
			best=$d
		fi
	done
	if [ -z "$best" ] && command -v initdb >/dev/null 2>&1; then
		best=$(dirname "$(command -v initdb)")
	fi
	[ -n "$best" ] || die "no PostgreSQL server binaries (install the postgresql package)"
	echo "$best"
}

# Run a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		id "$PGT_USER" >/dev/null 2>&1 || die "user $PGT_USER does not exist (install postgresql)"
		if command -v runuser >/dev/null 2>&1; then
			runuser -u "$PGT_USER" -- "$@"
		else
			setpriv --reuid="$PGT_USER" --regid="$PGT_USER" --init-groups -- "$@"
		fi
	else
		"$@"
	fi
}

# A TCP port on 127.0.0.1 that nobody listens on right now.
free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

running() {
	[ -f "$data/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1
}

cmd_start() {
	if [ ! -d "$dir" ]; then
		mkdir -p "$dir"
	fi
	if [ "$(id -u)" -eq 0 ]; then
		chown "$PGT_USER": "$dir"
		chmod 0755 "$dir"
	fi
	# the unix socket path must fit in sockaddr_un (107 bytes)
	[ ${#dir} -le 80 ] || die "directory path too long for a unix socket: $dir"
	as_owner test -w "$dir" || die "$PGT_USER cannot write to $dir (check the parent directories' permissions)"

	if running; then
		[ -f "$dir/port" ] || die "a server runs in $data but $dir/port is missing"
		ensure_db
		return 0
	fi
	if [ ! -f "$data/PG_VERSION" ]; then
		if [ -e "$data" ]; then
			rm -rf "$data"  # a half-made cluster from an interrupted initdb
		fi
		as_owner "$bindir/initdb" -D "$data" -U "$PGT_USER" -A trust -E UTF8 \
			--locale=C -N >"$dir/initdb.log" 2>&1 ||
			die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
		# throwaway cluster: speed over durability, room for parallel tests
		as_owner tee -a "$data/postgresql.conf" >/dev/null <<-EOF

		# pg-test-server.sh
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$dir'
		max_connections = 300
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		log_min_messages = warning
		log_timezone = 'UTC'
		timezone = 'UTC'
		EOF
	fi

	local port tries=0
	while :; do
		port=$(free_port)
		if as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
			-o "-p $port" start >/dev/null 2>&1; then
			break
		fi
		tries=$((tries + 1))
		# someone took the port between our probe and the server's bind: try another
		[ $tries -lt 3 ] || die "the server did not start: $(tail -n 5 "$dir/server.log")"
	done
	echo "$port" >"$dir/port.tmp"
	mv "$dir/port.tmp" "$dir/port"
	ensure_db
}

ensure_db() {
	local port
	port=$(cat "$dir/port")
	local psql=("$bindir/psql" -X -q -h "$dir" -p "$port" -U "$PGT_USER" -d postgres -v ON_ERROR_STOP=1)
	local have
	have=$(as_owner "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PGT_DB'") ||
		die "cannot connect to the server in $dir"
	if [ "$have" != "1" ]; then
		as_owner "${psql[@]}" -c "CREATE DATABASE $PGT_DB" >/dev/null ||
			die "cannot create database $PGT_DB"
	fi
}

cmd_stop() {
	[ -f "$data/PG_VERSION" ] || return 0
	if running; then
		as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null ||
			die "the server in $data did not stop"
	fi
	rm -f "$dir/port"
}

cmd_env() {
	running || die "no server runs in $dir (run: $0 start $dir)"
	local port
	port=$(cat "$dir/port")
	printf 'export OTPD_TEST_PG_HOST=%q\n' 127.0.0.1
	printf 'export OTPD_TEST_PG_PORT=%q\n' "$port"
	printf 'export OTPD_TEST_PG_USER=%q\n' "$PGT_USER"
	printf 'export OTPD_TEST_PG_DATABASE=%q\n' "$PGT_DB"
	printf 'export OTPD_TEST_PG_SOCKET_DIR=%q\n' "$dir"
}

bindir=$(find_bindir)
case "$cmd" in
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
*) usage ;;
esac
