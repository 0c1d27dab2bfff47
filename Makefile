# Goldkey — the two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test workers (pytest-xdist; each takes whole test files): one per core of the 2-core CI machine
TEST_WORKERS ?= 2

.PHONY: demo test setup serve bench lint clean console chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## The web console (console/ -> src/goldkey/console_dist/): npm ci when the lock file changes,
## a build when the console's sources (or the OpenAPI schema it is typed from) change
CONSOLE_SRC := $(shell find console/src -type f ! -name schema.d.ts 2>/dev/null) console/index.html \
	console/vite.config.ts console/tsconfig.json console/package.json docs/openapi.json
CONSOLE_DEPS := console/node_modules/.goldkey-ci
CONSOLE_STAMP := src/goldkey/console_dist/.goldkey-build

$(CONSOLE_DEPS): console/package-lock.json
	cd console && npm ci --no-audit --no-fund
	touch $@

$(CONSOLE_STAMP): $(CONSOLE_DEPS) $(CONSOLE_SRC)
	cd console && npm run build
	touch $@

console: $(CONSOLE_STAMP)

## Chromium (and CJK fonts) for the console's browser tests; Debian's packages
chromium:
	@if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk; fi

## Generate the demo market, load it through the real ingestion paths, serve on 127.0.0.1:8000
demo: $(STAMP) console
	$(BIN)/goldkey demo

## Set up and run the whole test suite (what CI runs)
test: $(STAMP) console chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

serve: $(STAMP) console
	$(BIN)/goldkey serve

## Performance runs (print their figures)
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) goldkey-data console/node_modules src/goldkey/console_dist
