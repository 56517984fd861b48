# Every target installs what it needs into .venv first (idempotent), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# promtool and prometheus from Debian's `prometheus` package, unpacked (not installed: no service, no root
# needed when the package lists are there) into the venv: tests/deploy runs them on deploy/prometheus.
TOOLS := $(VENV)/tools

.PHONY: install tools demo test test-unit test-integration test-deploy lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/python -m postback_router.demo

## make test: the whole suite; starts the embedded broker when KAFKA_BOOTSTRAP_SERVERS is unset
test: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

## make test-deploy: deploy/ checked by promtool (alert rules, their unit tests, the config) and by parsing
test-deploy: $(STAMP) $(TOOLS)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
