#!/usr/bin/env bash
# fuzz.sh - build otpd's libFuzzer targets (tests/fuzz) with clang, ASan and UBSan, and
# run them. `make fuzz` calls it.
#
#   scripts/fuzz.sh [TARGET...]      fuzz each target for FUZZ_SECONDS (default 30)
#   scripts/fuzz.sh --smoke [TARGET...]
#                                    run each target over its seed corpus only (-runs=0):
#                                    a few seconds, fit for `make check`
#   scripts/fuzz.sh --crashes        replay tests/fuzz/crashes/<target>/* and say which
#                                    still crash (exit 1 if any does)
#
# TARGET is params, compat, message, config, num or framing (default: all). Seeds are in
# tests/fuzz/corpus/<target>/ (committed, read-only here); what the fuzzer finds goes to
# $FUZZ_BUILD/corpus/<target>/, crash inputs to $FUZZ_BUILD/artifacts/<target>/.
# Environment: FUZZ_BUILD (build-fuzz), FUZZ_SECONDS (30), FUZZ_JOBS (1: targets run one
# after another; 2 runs two at once on a 2-core machine).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
build=${FUZZ_BUILD:-build-fuzz}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
secs=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-1}
all=(params compat message config num framing)

mode=fuzz
case "${1:-}" in
--smoke) mode=smoke; shift ;;
--crashes) mode=crashes; shift ;;
-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
	[ -f "tests/fuzz/fuzz_$t.c" ] || { echo "fuzz: unknown target '$t' (${all[*]})" >&2; exit 2; }
done
{ [[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -ge 1 ]; } || { echo "fuzz: FUZZ_SECONDS must be a positive integer" >&2; exit 2; }

command -v clang >/dev/null || { echo "fuzz: clang is missing (scripts/deps.sh --check installs it)" >&2; exit 1; }

# -fsanitize=fuzzer-no-link instruments every library for coverage; the harnesses add
# -fsanitize=fuzzer (tests/fuzz/meson.build). UB aborts instead of printing and going on.
cflags="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
if [ ! -f "$build/build.ninja" ]; then
	setup_log=$(mktemp)
	CC=clang meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false -Dbuildtype=debugoptimized -Dwerror=true \
		-Dc_args="$cflags" >"$setup_log" 2>&1 ||
		{ cat "$setup_log" >&2; rm -f "$setup_log"; exit 1; }
	rm -f "$setup_log"
fi
bins=()
for t in "${targets[@]}"; do bins+=("tests/fuzz/fuzz_$t"); done
ninja -C "$build" "${bins[@]}" >/dev/null || { ninja -C "$build" "${bins[@]}" >&2; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

max_len() {
	case "$1" in
	num) echo 128 ;;
	message) echo 4096 ;;
	*) echo 8192 ;;
	esac
}

dict_file() {
	case "$1" in
	params|compat|message) echo "$root/tests/fuzz/json.dict" ;;
	config) echo "$root/tests/fuzz/config.dict" ;;
	esac
}

# Run one target; its output goes to a log, a summary line to stdout.
run_one() {
	local t=$1
	local bin="$build/tests/fuzz/fuzz_$t" seeds="$root/tests/fuzz/corpus/$t"
	local log="$build/logs/$t.log" rc=0 dict
	local -a opts=(-max_len="$(max_len "$t")" -artifact_prefix="$build/artifacts/$t/")
	dict=$(dict_file "$t")
	[ -z "$dict" ] || opts+=(-dict="$dict")
	mkdir -p "$build/logs" "$build/corpus/$t" "$build/artifacts/$t"
	if [ "$mode" = smoke ]; then
		"$bin" -runs=0 "${opts[@]}" "$seeds" >"$log" 2>&1 || rc=$?
	else
		"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
			-print_final_stats=1 "${opts[@]}" "$build/corpus/$t" "$seeds" >"$log" 2>&1 || rc=$?
	fi
	if [ $rc -ne 0 ]; then
		echo "fuzz: $t FAILED (exit $rc); log: $log" >&2
		grep -E 'ERROR|SUMMARY|contract broken|runtime error|Test unit written' "$log" | head -n 20 >&2 || true
		return 1
	fi
	local execs
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
	if [ "$mode" = smoke ]; then
		echo "fuzz: $t ok ($(find "$seeds" -type f | wc -l) seeds)"
	else
		echo "fuzz: $t ok (${secs}s, ${execs:-?} runs, corpus $(find "$build/corpus/$t" -type f | wc -l) + $(find "$seeds" -type f | wc -l) seeds)"
	fi
}

if [ "$mode" = crashes ]; then
	still=0
	for t in "${targets[@]}"; do
		[ -d "tests/fuzz/crashes/$t" ] || continue
		for f in "tests/fuzz/crashes/$t"/*; do
			[ -f "$f" ] || continue
			if "$build/tests/fuzz/fuzz_$t" "$f" >"$build/replay.log" 2>&1; then
				echo "fuzz: $f no longer crashes"
			else
				echo "fuzz: $f still crashes:"
				grep -E 'ERROR|SUMMARY|contract broken|runtime error' "$build/replay.log" | head -n 5
				still=1
			fi
		done
	done
	rm -f "$build/replay.log"
	exit $still
fi

failed=0
pids=()
names=()
for t in "${targets[@]}"; do
	if [ "$jobs" -gt 1 ]; then
		run_one "$t" & pids+=($!); names+=("$t")
		if [ ${#pids[@]} -ge "$jobs" ]; then
			wait "${pids[0]}" || failed=1
			pids=("${pids[@]:1}"); names=("${names[@]:1}")
		fi
	else
		run_one "$t" || failed=1
	fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
