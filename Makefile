# apf-emu: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@echo "== synchronous faults: 32 MiB guest, 8 MiB host, 2 ms swap, 8 tasks on 1 vCPU =="
	$(BIN)/apf run --guest-mem 32MiB --host-mem 8MiB --swap-latency 2ms --tasks 8 --accesses 250 \
		--think 200us --prefill --mode sync --report demo-sync.report.json
	@echo
	@echo "== the same workload with asynchronous page faults =="
	$(BIN)/apf run --guest-mem 32MiB --host-mem 8MiB --swap-latency 2ms --tasks 8 --accesses 250 \
		--think 200us --prefill --mode async --report demo-async.report.json

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
