# The one task runner: README, CI and developers use these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint proto proto-check bench bench-ingest bench-search bench-locomo bench-governance clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

## Start the daemon on the embedded default (SQLite, Unix socket), in the foreground.
run: install
	$(BIN)/memosd serve

## The whole test suite.
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow'

lint: install
	$(BIN)/python -m pyflakes memosd clients/python/memos_client tests bench scripts

## Regenerate clients/python/memos_mip from protos/.
proto: install
	$(BIN)/python scripts/gen_protos.py

## Fail if the committed generated code differs from what protos/ generates.
proto-check: proto
	git diff --exit-code -- clients/python/memos_mip
	@test -z "$$(git status --porcelain -- clients/python/memos_mip)" || { git status --porcelain -- clients/python/memos_mip; exit 1; }

bench: bench-ingest bench-search bench-locomo bench-governance

bench-ingest: install
	$(BIN)/python bench/ingest_search.py --only ingest

bench-search: install
	$(BIN)/python bench/ingest_search.py --only search

bench-locomo: install
	$(BIN)/python bench/locomo.py

bench-governance: install
	$(BIN)/python bench/governance.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
