# connecto: `make demo` and `make test` are all a user needs; each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench image ci-services ci-services-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	scripts/install-torch.sh $(BIN)/pip
	$(BIN)/pip install -q -e '.[dev,local-server]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m connecto.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check connecto cli tests benchmarks
	$(BIN)/ruff format --check connecto cli tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

image:
	docker build -t connecto:latest $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) .

ci-services:
	bash scripts/ci-services.sh start

ci-services-stop:
	bash scripts/ci-services.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache daisy_logs
