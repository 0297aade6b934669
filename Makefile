# The two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
LAMBDA_PLATFORM ?= manylinux2014_aarch64
LAMBDA_PYTHON ?= 3.14

.PHONY: setup run demo test lint typecheck clean layers synth deploy bench models

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The whole pipeline on this machine: AWS emulator on :4566, API on :3000, sample events replayed.
## The sample is history (October 2026), so it is evaluated in event time by default (CLOCK=wall to change).
CLOCK ?= event
run: $(STAMP)
	$(BIN)/cdp run --clock $(CLOCK) $(RUN_ARGS)

## Replay events/sample.jsonl through the core in event time and print every transition.
demo: $(STAMP)
	$(BIN)/python -m cdp_dev.demo events/sample.jsonl --segments segments

## Every benchmark against its target; writes bench/out/latest.json (BENCH_ARGS=--quick for a short run).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## The computed traits' models on a planted history: clusters recovered (adjusted Rand index) and churn AUC on a
## time split, each against a baseline; writes bench/out/models.json (MODELS_ARGS=--quick for a short run).
models: $(STAMP)
	$(BIN)/python -m bench.models $(MODELS_ARGS)

## Lint, type-check and run the whole test suite (the browser tests load analytics.js from node_modules).
test: $(STAMP) node_modules/.bin/cdk
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Third-party layer for Lambda, without Docker: wheels for the Lambda platform.
layers: layers/deps/python/.built layers/models/python/.built

layers/deps/python/.built: layers/deps/requirements.txt
	rm -rf layers/deps/python
	$(BIN)/pip install --quiet --platform $(LAMBDA_PLATFORM) --python-version $(LAMBDA_PYTHON) \
		--implementation cp --only-binary=:all: --target layers/deps/python -r layers/deps/requirements.txt
	touch $@

## The jobs function's own layer (numpy, scikit-learn: arm64 wheels are manylinux_2_28 only), without the packages'
## tests and bytecode caches: 182 MB instead of 284 MB, within Lambda's 250 MB unzipped.
layers/models/python/.built: layers/models/requirements.txt
	rm -rf layers/models/python
	$(BIN)/pip install --quiet --platform $(LAMBDA_PLATFORM) --platform manylinux_2_28_aarch64 \
		--python-version $(LAMBDA_PYTHON) --implementation cp --only-binary=:all: --target layers/models/python \
		-r layers/models/requirements.txt
	find layers/models/python -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
	touch $@

node_modules/.bin/cdk: package.json
	npm install --no-audit --no-fund
	touch $@

## Synthesise the stack (offline) into cdk.out.
synth: $(STAMP) node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk synth --no-notices --quiet $(CDK_ARGS)

## Deploy to the account and region of your AWS credentials.
deploy: $(STAMP) layers node_modules/.bin/cdk
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk deploy --no-notices $(CDK_ARGS)

clean:
	rm -rf $(VENV) cdk.out node_modules layers/deps/python layers/models/python .pytest_cache .mypy_cache .ruff_cache .hypothesis
