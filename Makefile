# otpd — the front door. `make run` and `make check` are all a newcomer needs.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PYTHON     ?= /usr/bin/python3

.PHONY: all deps build run check unit api lint asan fuzz bench install clean

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) -Dwerror=true

build: deps $(BUILD)/build.ninja
	@ninja -C $(BUILD)

# Start otpd on SQLite with the log provider on 127.0.0.1:8080 (codes shown in the log:
# this is for local development).
run: build
	OTPD_LISTEN=$${OTPD_LISTEN:-127.0.0.1:8080} \
	OTPD_DATA_DIR=$${OTPD_DATA_DIR:-data} \
	OTPD_PROVIDER=$${OTPD_PROVIDER:-log} \
	OTPD_LOG_CODES=$${OTPD_LOG_CODES:-true} \
	exec $(BUILD)/otpd

# Everything: build (warnings are errors), unit + API tests on SQLite and PostgreSQL,
# cppcheck, then the same tests again under AddressSanitizer + UBSan.
check:
	@bash scripts/deps.sh --check
	@bash scripts/check.sh

unit: build
	meson test -C $(BUILD) --print-errorlogs

api: build
	OTPD_BIN=$(BUILD)/otpd $(PYTHON) -m pytest -q tests/api

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance \
	  --std=c11 --inline-suppr -I src --suppress=missingIncludeSystem src
	@bash scripts/lint.sh

fuzz:
	@bash scripts/fuzz.sh

bench: build
	@bash scripts/deps.sh --bench
	@bash bench/run.sh

# The binary (sbin), the systemd unit, the man page otpd(8), etc/otpd/otpd.env.example;
# DESTDIR=... works as with any meson install. Only build dependencies are installed.
install: build
	meson install -C $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
