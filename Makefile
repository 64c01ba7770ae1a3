# apf-emu: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-loaded venv valgrind redis-server clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@echo "== synchronous faults: 16 MiB guest, 4 MiB host, 2 ms swap, 8 tasks on 1 vCPU =="
	$(BIN)/apf run --guest-mem 16MiB --host-mem 4MiB --swap-latency 2ms --tasks 8 --accesses 250 \
		--think 200us --prefill --mode sync --report demo-sync.report.json
	@echo
	@echo "== the same workload with asynchronous page faults =="
	$(BIN)/apf run --guest-mem 16MiB --host-mem 4MiB --swap-latency 2ms --tasks 8 --accesses 250 \
		--think 200us --prefill --mode async --report demo-async.report.json
	@echo
	@$(BIN)/python -m apf.compare demo-sync.report.json demo-async.report.json

# `apf trace record` and its tests run programs under valgrind's lackey: install it when missing.
valgrind:
	@command -v valgrind >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; \
		else \
			echo "valgrind is missing and cannot be installed here: run 'sudo apt-get install valgrind'" >&2; exit 1; \
		fi; }

# The remote-swap tests run a real Redis (and a three-node cluster, and one on TLS with
# certificates made by openssl): install them when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools openssl >/dev/null; \
		else \
			echo "redis-server or openssl is missing and cannot be installed here: run 'sudo apt-get install redis-server redis-tools openssl'" >&2; exit 1; \
		fi; }

test: $(STAMP) valgrind redis-server
	$(BIN)/pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

# The suite under CPU pressure: `make test` RUNS times (default 10) beside two CPU hogs, which are
# killed however the loop ends. Stops at the first failing run.
RUNS ?= 10
test-loaded: $(STAMP)
	@set -e; \
	yes >/dev/null & hog1=$$!; \
	yes >/dev/null & hog2=$$!; \
	trap 'kill $$hog1 $$hog2 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 1 $(RUNS)); do \
		echo "== loaded run $$i of $(RUNS) (2 CPU hogs: pids $$hog1 $$hog2) =="; \
		$(MAKE) --no-print-directory test; \
	done
