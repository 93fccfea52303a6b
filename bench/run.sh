#!/usr/bin/env bash
# bench/run.sh - measure otpd with wrk against baselines started in the same run on the
# same machine, and print a markdown table (also saved to bench/results/latest.md).
# `make bench` calls it after `make build` and `scripts/deps.sh --bench`; it installs
# nothing itself.
#
# Scenarios (a scenario's servers run alternately: warm-up, then otpd, baseline, otpd,
# baseline, ... so slow drifts of a noisy machine hit both alike):
#   health       GET /health            otpd  vs nginx returning a static {"status":true}
#   send         POST /sms (SQLite)     otpd (durable commit + outbox job, provider log)
#                                       vs the legacy PHP reconstruction (PDO SQLite,
#                                       plaintext code, synchronous POST to a Queue)
#   send-dummy   POST /sms, DUMMY=true  otpd vs the PHP reconstruction without the Queue
#   check        GET /sms/check         half right, half wrong codes over pre-seeded
#                                       phones; otpd with OTPD_MAX_CHECK_ATTEMPTS=0
#   send-pg, check-pg                   the same on PostgreSQL (scripts/pg-test-server.sh,
#                                       switched to fsync=on, synchronous_commit=on)
#   send-pg-dummy                       (not run by default) POST /sms on PostgreSQL with
#                                       DUMMY=true: the send without the outbox's work
#   native-send  POST /otp/send         otpd's own API (an app key, a code made by the
#                                       server) vs the compat send of the same otpd build
#   native-verify POST /otp/verify      by recipient over pre-seeded phones, half right,
#                                       vs the compat check (reusable codes, no limit)
#   native-send-pg, native-verify-pg    the same on PostgreSQL
#
# Environment: BENCH_DURATION (seconds per run, 4), BENCH_RUNS (3), BENCH_WARMUP (2),
# BENCH_CONNECTIONS (16), BENCH_THREADS (2), BENCH_CHECK_PHONES (1000),
# BENCH_SCENARIOS (space-separated subset), BENCH_PG (auto | 0), OTPD_BIN,
# BENCH_KEEP=1 (keep the work directory), BENCH_OUT (bench/results/latest.md),
# BENCH_OTPD_ENV (extra VAR=value settings for every otpd, e.g. "OTPD_PG_POOL=16").
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
export BENCH_DIR="$root/bench"

duration=${BENCH_DURATION:-4}
runs=${BENCH_RUNS:-3}
warmup=${BENCH_WARMUP:-2}
conns=${BENCH_CONNECTIONS:-16}
wthreads=${BENCH_THREADS:-2}
export BENCH_CHECK_PHONES=${BENCH_CHECK_PHONES:-1000}
scenarios=${BENCH_SCENARIOS:-"health send send-dummy check native-send native-verify send-pg check-pg native-send-pg native-verify-pg"}
want_pg=${BENCH_PG:-auto}
out=${BENCH_OUT:-$root/bench/results/latest.md}
legacy_children=10 # PHP_PM_MAX_CHILDREN's default in the old container; otpd's threads too

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

for v in duration runs warmup conns wthreads BENCH_CHECK_PHONES; do
	{ [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ]; } || die "$v must be a positive integer"
done

otpd=${OTPD_BIN:-}
if [ -z "$otpd" ]; then
	for c in build/otpd build/src/otpd; do
		[ -x "$c" ] && { otpd=$root/$c; break; }
	done
fi
{ [ -n "$otpd" ] && [ -x "$otpd" ]; } || die "no otpd binary (run make build, or set OTPD_BIN)"
command -v wrk >/dev/null || die "wrk is missing (scripts/deps.sh --bench installs it)"
py=/usr/bin/python3
[ -x "$py" ] || py=python3

nginx_bin=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
fpm_bin=$(command -v php-fpm 2>/dev/null || find /usr/sbin -name 'php-fpm*' 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$nginx_bin" ] || say "nginx is missing: no nginx or PHP baseline (scripts/deps.sh --bench)"
[ -n "$fpm_bin" ] || say "php-fpm is missing: no PHP baseline (scripts/deps.sh --bench)"

work=$(mktemp -d /tmp/otpd-bench.XXXXXX)
chmod 0755 "$work" # nginx workers and the postgres user must reach into it
results="$work/results.tsv"
: >"$results"
pids=()
pg_dir=""

cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	if [ -n "$pg_dir" ]; then
		bash "$root/scripts/pg-test-server.sh" stop "$pg_dir" >/dev/null 2>&1 || true
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		say "work directory kept: $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	"$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Wait until URL answers HTTP at all (any status), or fail after 30 s.
wait_http() {
	local url=$1 pid=$2 i
	for i in $(seq 1 300); do
		if curl -s -o /dev/null --max-time 1 "$url"; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

stop_pid() {
	local p=$1 keep=() q
	kill -TERM "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	for q in "${pids[@]}"; do
		[ "$q" = "$p" ] || keep+=("$q")
	done
	pids=("${keep[@]+"${keep[@]}"}")
}

# start_otpd NAME VAR=value... : start otpd with its own data directory on a free port;
# sets otpd_pid and otpd_url.
start_otpd() {
	local name=$1
	shift
	local port dir="$work/otpd-$name"
	local -a extra=()
	read -r -a extra <<<"${BENCH_OTPD_ENV:-}"
	mkdir -p "$dir"
	port=$(free_port)
	env -i PATH="$PATH" \
		OTPD_LISTEN="127.0.0.1:$port" OTPD_DATA_DIR="$dir" OTPD_LOG_LEVEL=warn OTPD_ACCESS_LOG=false \
		OTPD_PROVIDER=log OTPD_THREADS="$legacy_children" OTPD_MAX_CHECK_ATTEMPTS=0 "$@" \
		"${extra[@]+"${extra[@]}"}" "$otpd" >"$dir/otpd.log" 2>&1 &
	otpd_pid=$!
	pids+=("$otpd_pid")
	otpd_url="http://127.0.0.1:$port"
	wait_http "$otpd_url/health" "$otpd_pid" ||
		die "otpd ($name) did not start: $(tail -n 5 "$dir/otpd.log")"
}

# Outbox jobs not finished yet (pending + sending), from GET /admin/outbox.
outbox_backlog() {
	curl -s --max-time 5 "$1/admin/outbox?limit=1" | "$py" -c 'import json, sys
c = json.load(sys.stdin)["content"]["counts"]
print(c["pending"] + c["sending"])'
}

# After a send run: record the backlog the run left and wait (up to 120 s) until the
# outbox has delivered it, so it does not eat the CPU of the next measurement.
drain() {
	local scenario=$1 label=$2 url=$3 backlog t0 t1 left
	backlog=$(outbox_backlog "$url") || { say "cannot read $url/admin/outbox"; return 0; }
	t0=$(date +%s.%N)
	left=$backlog
	while [ "$left" -gt 0 ]; do
		sleep 0.2
		left=$(outbox_backlog "$url") || break
		if "$py" -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 > 120 else 1)"; then
			say "$label: outbox still holds $left jobs after 120 s"
			break
		fi
	done
	t1=$(date +%s.%N)
	printf '%s\t%s\tdrain\t{"backlog":%s,"seconds":%s,"left":%s}\n' "$scenario" "$label" \
		"$backlog" "$("$py" -c "print(round($t1 - $t0, 2))")" "${left:-0}" >>"$results"
}

run_counter=0
# wrk_once URL SCRIPT SECONDS -> the BENCH json line on stdout
wrk_once() {
	run_counter=$((run_counter + 1))
	BENCH_RUN=$run_counter wrk -t"$wthreads" -c"$conns" -d"$3"s --timeout 10s \
		-s "$root/bench/$2" "$1" 2>"$work/wrk.err" | sed -n 's/^BENCH //p'
	if [ -s "$work/wrk.err" ]; then
		sed 's/^/  wrk: /' "$work/wrk.err" | head -n 3 >&2
	fi
}

# measure SCENARIO SCRIPT LABEL URL ROLE [LABEL URL ROLE]... : warm each server up,
# then alternate RUNS timed runs between them. ROLE is otpd or baseline, with -outbox
# to drain the outbox after each run, and @SCRIPT to run another script than SCRIPT
# against that server (native against compat on one otpd).
measure() {
	local scenario=$1 default_script=$2
	shift 2
	local -a labels=() urls=() roles=() scripts=()
	while [ $# -gt 0 ]; do
		labels+=("$1"); urls+=("$2")
		if [[ "$3" == *@* ]]; then
			roles+=("${3%@*}"); scripts+=("${3#*@}")
		else
			roles+=("$3"); scripts+=("$default_script")
		fi
		shift 3
	done
	local i r line
	for i in "${!labels[@]}"; do
		say "$scenario: warm-up ${labels[$i]}"
		wrk_once "${urls[$i]}" "${scripts[$i]}" "$warmup" >/dev/null
		[[ "${roles[$i]}" == *-outbox ]] && drain "$scenario-warmup" "${labels[$i]}" "${urls[$i]}"
	done
	for r in $(seq 1 "$runs"); do
		for i in "${!labels[@]}"; do
			line=$(wrk_once "${urls[$i]}" "${scripts[$i]}" "$duration")
			[ -n "$line" ] || die "$scenario: wrk gave no result for ${labels[$i]}"
			printf '%s\t%s\t%s\t%s\n' "$scenario" "${labels[$i]}" "${roles[$i]%-outbox}" "$line" >>"$results"
			say "$scenario: ${labels[$i]} run $r: $(echo "$line" | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("%.0f req/s, p50 %.2f ms, p99 %.2f ms" % (d["rps"], d["p50_us"]/1000, d["p99_us"]/1000))')"
			[[ "${roles[$i]}" == *-outbox ]] && drain "$scenario" "${labels[$i]}" "${urls[$i]}"
		done
	done
	return 0
}

has() { [[ " $scenarios " == *" $1 "* ]]; }

# ---- machine ---------------------------------------------------------------------------
load_start=$(cut -d' ' -f1 /proc/loadavg)
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
[ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
{
	echo "machine	nproc $(nproc), CPU ${cpu:-unknown}, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r), work dir on $(df -T "$work" | awk 'NR==2 {print $2}')"
	echo "versions	$("$otpd" --version 2>/dev/null | head -n 1 || echo "otpd ?"); $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'); ${nginx_bin:+$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')}; ${fpm_bin:+$("$fpm_bin" -v 2>/dev/null | head -n 1 | awk '{print $1, $2}')}; SQLite $(sqlite3 --version 2>/dev/null | awk '{print $1}')"
	echo "settings	wrk -t$wthreads -c$conns, $runs runs of ${duration}s after a ${warmup}s warm-up per server, runs alternating between the servers of a scenario; otpd and php-fpm with $legacy_children workers each${BENCH_OTPD_ENV:+; otpd with $BENCH_OTPD_ENV}"
} >"$work/machine.tsv"

# ---- baselines: nginx (static answer, fake Queue, FastCGI front of the PHP) -------------
nginx_port="" legacy_sqlite_port="" legacy_dummy_port="" legacy_pg_port="" legacy_pg_dummy_port=""
legacy_db="$work/legacy/legacy.sqlite"
php_dir="$root/bench/baselines/legacy_php"

reset_legacy_sqlite() {
	rm -f "$legacy_db" "$legacy_db-wal" "$legacy_db-shm"
	sqlite3 "$legacy_db" <"$php_dir/schema.sqlite.sql" >/dev/null
}

# ---- PostgreSQL -------------------------------------------------------------------------
pg_port=""
if { has send-pg || has check-pg || has send-pg-dummy; } && [ "$want_pg" != 0 ]; then
	pg_dir="$work/pg"
	if bash "$root/scripts/pg-test-server.sh" start "$pg_dir" >"$work/pg-start.log" 2>&1; then
		pg_port=$(cat "$pg_dir/port")
		psql_pg() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
		# pg-test-server.sh trades durability for test speed; a benchmark of durable
		# commits needs it back (all three are reloadable settings).
		psql_pg -d postgres -c "ALTER SYSTEM SET fsync = on" \
			-c "ALTER SYSTEM SET synchronous_commit = on" \
			-c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null
		sleep 0.5
		[ "$(psql_pg -d postgres -tAc 'SHOW fsync')" = on ] || die "PostgreSQL did not take fsync=on"
		echo "postgres	PostgreSQL $(psql_pg -d postgres -tAc 'SHOW server_version') from scripts/pg-test-server.sh, with fsync=on, synchronous_commit=on, full_page_writes=on" >>"$work/machine.tsv"
	else
		say "PostgreSQL scenarios skipped: scripts/pg-test-server.sh failed: $(tail -n 3 "$work/pg-start.log")"
		echo "postgres	skipped: scripts/pg-test-server.sh start failed" >>"$work/machine.tsv"
		pg_dir=""
	fi
fi

if [ -n "$nginx_bin" ]; then
	nginx_port=$(free_port)
	mkdir -p "$work/nginx/tmp" "$work/legacy"
	legacy_server() { # PORT DSN PERSISTENT QUEUE_URL
		cat <<-EOF
		server {
			listen 127.0.0.1:$1;
			location / {
				fastcgi_param SCRIPT_FILENAME $php_dir/index.php;
				fastcgi_param REQUEST_METHOD \$request_method;
				fastcgi_param REQUEST_URI \$request_uri;
				fastcgi_param QUERY_STRING \$query_string;
				fastcgi_param CONTENT_TYPE \$content_type;
				fastcgi_param CONTENT_LENGTH \$content_length;
				fastcgi_param SERVER_PROTOCOL \$server_protocol;
				fastcgi_param REMOTE_ADDR \$remote_addr;
				fastcgi_param LEGACY_DSN "$2";
				fastcgi_param LEGACY_PERSISTENT "$3";
				fastcgi_param LEGACY_QUEUE_URL "$4";
				fastcgi_pass unix:$work/php-fpm.sock;
			}
		}
		EOF
	}
	servers=""
	if [ -n "$fpm_bin" ]; then
		legacy_sqlite_port=$(free_port)
		legacy_dummy_port=$(free_port)
		servers+=$(legacy_server "$legacy_sqlite_port" "sqlite:$legacy_db" 0 "http://127.0.0.1:$nginx_port")
		servers+=$'\n'$(legacy_server "$legacy_dummy_port" "sqlite:$legacy_db" 0 "")
		if [ -n "$pg_port" ]; then
			legacy_pg_port=$(free_port)
			legacy_pg_dummy_port=$(free_port)
			pg_dsn="pgsql:host=127.0.0.1;port=$pg_port;dbname=legacy_bench;user=postgres"
			servers+=$'\n'$(legacy_server "$legacy_pg_port" "$pg_dsn" 1 "http://127.0.0.1:$nginx_port")
			servers+=$'\n'$(legacy_server "$legacy_pg_dummy_port" "$pg_dsn" 1 "")
		fi
	fi
	cat >"$work/nginx/nginx.conf" <<-EOF
	worker_processes $(nproc);
	daemon off;
	pid $work/nginx/nginx.pid;
	error_log $work/nginx/error.log warn;
	events { worker_connections 4096; }
	http {
		access_log off;
		keepalive_requests 10000000;
		client_body_temp_path $work/nginx/tmp/body;
		fastcgi_temp_path $work/nginx/tmp/fastcgi;
		proxy_temp_path $work/nginx/tmp/proxy;
		uwsgi_temp_path $work/nginx/tmp/uwsgi;
		scgi_temp_path $work/nginx/tmp/scgi;
		# the HTTP ceiling, and the fake Queue the PHP reconstruction posts to
		server {
			listen 127.0.0.1:$nginx_port;
			default_type application/json;
			location = /health { return 200 '{"status":true}'; }
			location = /task { return 200 '{"status":true}'; }
		}
		$servers
	}
	EOF
	"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
		>"$work/nginx/stdout.log" 2>&1 &
	nginx_pid=$!
	pids+=("$nginx_pid")
	wait_http "http://127.0.0.1:$nginx_port/health" "$nginx_pid" ||
		die "nginx did not start: $(tail -n 5 "$work/nginx/error.log" "$work/nginx/stdout.log" 2>/dev/null)"
fi

if [ -n "$fpm_bin" ] && [ -n "$nginx_bin" ]; then
	reset_legacy_sqlite
	if [ -n "$pg_port" ]; then
		psql_pg -d postgres -c "CREATE DATABASE legacy_bench" >/dev/null
		psql_pg -d legacy_bench -f "$php_dir/schema.pg.sql" >/dev/null
	fi
	user_lines=""
	[ "$(id -u)" -eq 0 ] && user_lines=$'user = root\ngroup = root'
	cat >"$work/php-fpm.conf" <<-EOF
	[global]
	pid = $work/php-fpm.pid
	error_log = $work/php-fpm.log
	daemonize = no
	[legacy]
	$user_lines
	listen = $work/php-fpm.sock
	listen.mode = 0666
	pm = static
	pm.max_children = $legacy_children
	pm.max_requests = 500
	clear_env = yes
	php_admin_value[opcache.validate_timestamps] = 0
	php_admin_value[display_errors] = stderr
	catch_workers_output = yes
	EOF
	"$fpm_bin" -R -F -y "$work/php-fpm.conf" >"$work/php-fpm.stdout" 2>&1 &
	fpm_pid=$!
	pids+=("$fpm_pid")
	for i in $(seq 1 100); do
		[ -S "$work/php-fpm.sock" ] && break
		kill -0 "$fpm_pid" 2>/dev/null || die "php-fpm did not start: $(tail -n 5 "$work/php-fpm.log" "$work/php-fpm.stdout")"
		sleep 0.1
	done
	wait_http "http://127.0.0.1:$legacy_sqlite_port/" "$fpm_pid" || die "the PHP baseline does not answer"
	php_version=$("$fpm_bin" -v 2>/dev/null | head -n 1 | awk '{print $2}')
	echo "legacy	PHP $php_version php-fpm (pm static, $legacy_children children, opcache on) behind nginx; PDO; SQLite WAL with synchronous=FULL, one connection per request; on PostgreSQL persistent connections (standing in for the old deployment's pooler)" >>"$work/machine.tsv"
fi

reset_legacy_pg() {
	psql_pg -d legacy_bench -c "TRUNCATE otp_password, otp_limit RESTART IDENTITY" >/dev/null
}

legacy_args() { # PORT -> "legacy-php URL baseline" or nothing
	[ -n "$1" ] && echo "legacy-php http://127.0.0.1:$1 baseline"
	return 0
}

# ---- scenarios ---------------------------------------------------------------------------
if has health; then
	start_otpd health
	# shellcheck disable=SC2046
	measure health health.lua otpd "$otpd_url" otpd \
		$([ -n "$nginx_port" ] && echo "nginx-static http://127.0.0.1:$nginx_port baseline")
	stop_pid "$otpd_pid"
fi

if has send; then
	start_otpd send DUMMY=false
	[ -n "$legacy_sqlite_port" ] && reset_legacy_sqlite
	# shellcheck disable=SC2046
	measure send send.lua otpd "$otpd_url" otpd-outbox $(legacy_args "$legacy_sqlite_port")
	stop_pid "$otpd_pid"
fi

if has send-dummy; then
	start_otpd send-dummy DUMMY=true
	[ -n "$legacy_dummy_port" ] && reset_legacy_sqlite
	# shellcheck disable=SC2046
	measure send-dummy send.lua otpd "$otpd_url" otpd-outbox \
		$([ -n "$legacy_dummy_port" ] && echo "legacy-php-noqueue http://127.0.0.1:$legacy_dummy_port baseline")
	stop_pid "$otpd_pid"
fi

if has check; then
	start_otpd check DUMMY=true
	say "check: seeding $BENCH_CHECK_PHONES codes"
	"$py" "$root/bench/seed.py" "$otpd_url" "$BENCH_CHECK_PHONES"
	if [ -n "$legacy_sqlite_port" ]; then
		reset_legacy_sqlite
		"$py" "$root/bench/seed.py" "http://127.0.0.1:$legacy_dummy_port" "$BENCH_CHECK_PHONES"
	fi
	# shellcheck disable=SC2046
	measure check check.lua otpd "$otpd_url" otpd $(legacy_args "$legacy_sqlite_port")
	stop_pid "$otpd_pid"
fi

pg_env() { # DATABASE
	echo PG_HOST=127.0.0.1 PG_REAL_HOST=127.0.0.1 PG_PORT="$pg_port" PG_USER=postgres \
		PG_DATABASE="$1"
}

if has send-pg && [ -n "$pg_port" ]; then
	# shellcheck disable=SC2046
	start_otpd send-pg DUMMY=false $(pg_env otpd_send)
	[ -n "$legacy_pg_port" ] && reset_legacy_pg
	# shellcheck disable=SC2046
	measure send-pg send.lua otpd "$otpd_url" otpd-outbox $(legacy_args "$legacy_pg_port")
	stop_pid "$otpd_pid"
fi

if has send-pg-dummy && [ -n "$pg_port" ]; then
	# shellcheck disable=SC2046
	start_otpd send-pg-dummy DUMMY=true $(pg_env otpd_send_dummy)
	[ -n "$legacy_pg_dummy_port" ] && reset_legacy_pg
	# shellcheck disable=SC2046
	measure send-pg-dummy send.lua otpd "$otpd_url" otpd-outbox \
		$([ -n "$legacy_pg_dummy_port" ] && echo "legacy-php-noqueue http://127.0.0.1:$legacy_pg_dummy_port baseline")
	stop_pid "$otpd_pid"
fi

if has check-pg && [ -n "$pg_port" ]; then
	# shellcheck disable=SC2046
	start_otpd check-pg DUMMY=true $(pg_env otpd_check)
	say "check-pg: seeding $BENCH_CHECK_PHONES codes"
	"$py" "$root/bench/seed.py" "$otpd_url" "$BENCH_CHECK_PHONES"
	if [ -n "$legacy_pg_port" ]; then
		reset_legacy_pg
		"$py" "$root/bench/seed.py" "http://127.0.0.1:$legacy_pg_port" "$BENCH_CHECK_PHONES"
	fi
	# shellcheck disable=SC2046
	measure check-pg check.lua otpd "$otpd_url" otpd $(legacy_args "$legacy_pg_port")
	stop_pid "$otpd_pid"
fi

# make_app NAME VAR=value... : an app (codes reusable, attempts unlimited, custom codes
# allowed, no resend cooldown) and a key, in the data directory start_otpd NAME will
# use; sets bench_token.
make_app() {
	local name=$1
	shift
	local dir="$work/otpd-$name"
	mkdir -p "$dir"
	env -i PATH="$PATH" OTPD_DATA_DIR="$dir" OTPD_LOG_LEVEL=warn "$@" "$otpd" app create \
		--name bench --no-consume --max-attempts 0 --custom-code --resend-cooldown 0 \
		--max-sends 100 --code-length 5 >"$dir/app.txt" 2>"$dir/app.err" ||
		die "otpd app create failed: $(cat "$dir/app.err")"
	local app
	app=$(sed -n 's/^id: //p' "$dir/app.txt")
	bench_token=$(env -i PATH="$PATH" OTPD_DATA_DIR="$dir" OTPD_LOG_LEVEL=warn "$@" "$otpd" \
		key create --app "$app" --json 2>"$dir/key.err" |
		"$py" -c 'import json, sys; print(json.load(sys.stdin)["token"])') ||
		die "otpd key create failed: $(cat "$dir/key.err")"
	export BENCH_TOKEN=$bench_token
}

# native_scenarios SUFFIX VAR=value... : native-send and native-verify against the same
# build's compat send and check, on the store the settings name.
native_scenarios() {
	local sfx=$1 compat_url
	shift
	if has "native-send$sfx"; then
		make_app "native-send$sfx" "$@"
		start_otpd "native-send$sfx" DUMMY=false "$@"
		measure "native-send$sfx" native_send.lua otpd "$otpd_url" otpd-outbox \
			compat-send "$otpd_url" baseline-outbox@send.lua
		stop_pid "$otpd_pid"
	fi
	if has "native-verify$sfx"; then
		make_app "native-verify$sfx" "$@"
		start_otpd "native-verify$sfx" DUMMY=true "$@"
		say "native-verify$sfx: seeding $BENCH_CHECK_PHONES verifications and codes"
		"$py" "$root/bench/seed_native.py" "$otpd_url" "$bench_token" "$BENCH_CHECK_PHONES"
		"$py" "$root/bench/seed.py" "$otpd_url" "$BENCH_CHECK_PHONES"
		compat_url=$otpd_url
		measure "native-verify$sfx" native_verify.lua otpd "$otpd_url" otpd \
			compat-check "$compat_url" baseline@check.lua
		stop_pid "$otpd_pid"
	fi
}

native_scenarios ""
if [ -n "$pg_port" ]; then
	# shellcheck disable=SC2046
	native_scenarios -pg $(pg_env otpd_native)
fi

echo "load	1-minute load average $load_start at the start, $(cut -d' ' -f1 /proc/loadavg) at the end (other work on the machine skews both sides of a ratio alike only while runs alternate)" >>"$work/machine.tsv"
mkdir -p "$(dirname "$out")"
"$py" "$root/bench/report.py" "$work/machine.tsv" "$results" >"$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
say "saved to ${out#"$root"/}"
