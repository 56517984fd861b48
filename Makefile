# Every target installs what it needs into .venv first (idempotent), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# promtool and prometheus from Debian's `prometheus` package, unpacked (not installed: no service, no root
# needed when the package lists are there) into the venv: tests/deploy runs them on deploy/prometheus.
TOOLS := $(VENV)/tools

.PHONY: install tools demo chaos test test-later test-unit test-integration test-deploy lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# `make bench` needs the `bench` extra too (faust-streaming, matplotlib): a stamp of its own, so that the
# other targets never install it.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

$(TOOLS)/.installed:
	rm -rf $(TOOLS)
	mkdir -p $(TOOLS)/deb $(TOOLS)/root $(TOOLS)/bin
	cd $(TOOLS)/deb && (apt-get download prometheus || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb --fsys-tarfile $(TOOLS)/deb/prometheus_*.deb | tar -x -C $(TOOLS)/root ./usr/bin/promtool ./usr/bin/prometheus
	ln -sf ../root/usr/bin/promtool $(TOOLS)/bin/promtool
	ln -sf ../root/usr/bin/prometheus $(TOOLS)/bin/prometheus
	$(TOOLS)/bin/promtool --version
	rm -rf $(TOOLS)/deb
	@touch $@

## make tools: promtool and prometheus into .venv/tools/bin (Debian's package; needs apt-get and dpkg-deb)
tools: $(TOOLS)/.installed

## make demo: the whole job end to end on the embedded broker (or KAFKA_BOOTSTRAP_SERVERS)
demo: $(STAMP)
	$(BIN)/python -m devtools.demo

## make chaos: 100,000 conversions through two workers and two dispatchers that are SIGKILLed every 10-20 s,
## failing destinations, hostile records and a rules change, against a reference model (minutes); writes
## chaos-report.json. CHAOS_ARGS='--short' is the ~2-minute run that make test includes.
chaos: $(STAMP)
	$(BIN)/python -m devtools.chaos $(CHAOS_ARGS)

## make bench: the service against plain-client baselines in the same run (~15 minutes; not in make test);
## prints a table, writes bench-results.json and bench-latency.png. BENCH_ARGS='--quick' for a short run,
## '--only matcher,latency' for some sections, '--repeats 3'
bench: $(BENCH_STAMP)
	$(BIN)/python -m devtools.bench $(BENCH_ARGS)

## make test: the whole suite, then its time-dependent part as if it were 60 days later; starts the
## embedded broker when KAFKA_BOOTSTRAP_SERVERS is unset
test: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-later

# The clock of pytest and of every process it starts moves 60 days ahead (tests/clock_shift), so that a
# date written into a test fails now rather than when it ages past an age rule. Unit tests all run again
# (seconds); integration tests only where marked time_dependent.
LATER_DAYS ?= 60
## make test-later: the unit tests and the time-dependent integration tests, as if it were 60 days later
test-later: $(STAMP)
	@echo "-- the time-dependent tests again, as if it were $(LATER_DAYS) days later"
	POSTBACK_TEST_DAYS_AHEAD=$(LATER_DAYS) PYTHONPATH=$(CURDIR)/tests/clock_shift \
		$(BIN)/python -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestAssertRewriteWarning \
		-m "not integration or time_dependent" --ignore=tests/deploy tests $(PYTEST_ARGS)

## make test-unit: every test that needs no broker and no promtool (seconds)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/integration --ignore=tests/deploy tests $(PYTEST_ARGS)

test-integration: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

## make test-deploy: deploy/ checked by promtool (alert rules, their unit tests, the config) and by parsing
test-deploy: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy $(PYTEST_ARGS)

## make lint: ruff, mypy, and the import contracts (layers, pure cores, independence: pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
