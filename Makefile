# The one task runner: README, CI and developers use these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MemoryOS (MemOS on PyPI) for the tests that round-trip through the real MemOS; never in $(VENV).
MEMOS_VENV ?= .venv-memos
MEMOS_STAMP := $(MEMOS_VENV)/.installed

.PHONY: bench-pubsub bench-pubsub-floor cluster install memos-env run test test-fast lint proto proto-check protocol-docs proto-contract check-systemd bench bench-ingest bench-search bench-locomo bench-governance bench-export-import clean bench-kv-ttft bench-blob bench-adapter bench-mcp bench-engines bench-put-many bench-blob-s3 bench-memory bench-cluster bench-mixed bench-embed bench-dense

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

## MemoryOS 2.0.33 and its dependencies (scripts/memos_env.txt) in $(MEMOS_VENV), CPU torch only, even
## on a GPU machine: about 320 MB downloaded (190 MB of it torch's CPU wheel), 1.5 GB installed, some
## 7 minutes on 2 cores. tests/test_memos_real.py drives it in a subprocess; the stamp keeps a second
## `make test` from installing it again.
memos-env: $(MEMOS_STAMP)

$(MEMOS_STAMP): scripts/memos_env.txt scripts/install_torch.sh
	$(PYTHON) -m venv $(MEMOS_VENV)
	$(MEMOS_VENV)/bin/python -m pip install -q --upgrade pip
	scripts/install_torch.sh $(MEMOS_VENV)/bin/python cpu
	$(MEMOS_VENV)/bin/python -m pip install -q -r scripts/memos_env.txt
	touch $@

## Start the daemon on the embedded default (SQLite, Unix socket), in the foreground.
run: install
	$(BIN)/memosd serve

## A local three-daemon cluster (PostgreSQL, NATS and the S3 stand-in from the dev extra), in the foreground;
## Ctrl-C stops it all. docs/cluster.md says how to run one on your own servers.
cluster: install
	$(BIN)/python scripts/cluster.py

## The whole test suite, the round trips through the real MemOS included (memos-env).
test: install memos-env
	MEMOSD_MEMOS_PYTHON=$(CURDIR)/$(MEMOS_VENV)/bin/python $(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow'

## ruff over everything (rules and exclusions in pyproject.toml); mypy over the core packages ([tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## Regenerate memos_mip/v1 from protos/.
proto: install
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/proto_contract.py docs

## docs/protocol.md from the comments in protos/ (also part of `make proto`).
protocol-docs: install
	$(BIN)/python scripts/proto_contract.py docs

## The protocol as a contract: docs/protocol.md is current, and nothing breaks the last release
## (protos/release/*.json; after a release: scripts/proto_contract.py snapshot --ref vX.Y.Z --out ...).
proto-contract: install
	$(BIN)/python scripts/proto_contract.py docs --check
	$(BIN)/python scripts/proto_contract.py breaking

## systemd units: `systemd-analyze verify` is silent and the system unit's exposure is <= 1.5.
check-systemd: install
	MEMOSD=$(CURDIR)/$(BIN)/memosd scripts/check_systemd.sh

## Fail if the committed generated code differs from what protos/ generates.
proto-check: proto
	git diff --exit-code -- memos_mip/v1
	@test -z "$$(git status --porcelain -- memos_mip/v1)" || { git status --porcelain -- memos_mip/v1; exit 1; }

bench: bench-ingest bench-search bench-locomo bench-governance bench-pubsub bench-pubsub-floor bench-export-import bench-kv-ttft bench-blob bench-adapter bench-mcp bench-engines bench-put-many bench-blob-s3 bench-memory bench-cluster bench-mixed bench-embed bench-dense

bench-ingest: install
	$(BIN)/python bench/ingest_search.py --only ingest

bench-search: install
	$(BIN)/python bench/ingest_search.py --only search

bench-locomo: install
	$(BIN)/python bench/locomo.py

bench-governance: install
	$(BIN)/python bench/governance.py

bench-pubsub: install
	scripts/install_redis.sh
	$(BIN)/python bench/pubsub.py

## MemStore's own CPU per event, with no transport: what bench-pubsub's server CPU is made of.
bench-pubsub-floor: install
	$(BIN)/python bench/pubsub_floor.py

bench-export-import: install
	$(BIN)/python bench/export_import.py

## Activation memory: time to first token with a pulled KV cache vs a full prefill (Qwen2-shaped, 0.5B, CPU).
bench-kv-ttft: install
	$(BIN)/python bench/kv_ttft.py

## Upload and download throughput of a 1 GiB KV cache through the daemon vs memory copy bandwidth.
bench-blob: install
	$(BIN)/python bench/blob_throughput.py

## Parametric memory: pull and load of a rank-16 adapter through the daemon vs PeftModel.from_pretrained from a
## local directory (Qwen2-shaped, 0.5B, CPU).
bench-adapter: install
	$(BIN)/python bench/adapter_load.py

## memosctl mcp: a memory_search through it vs the Python client, its start-up, publish-to-resources/updated delay.
bench-mcp: install
	$(BIN)/python bench/mcp_search.py

## LoCoMo recall@10 and search latency on SQLite and PostgreSQL in one run (a throwaway PostgreSQL server).
bench-engines: install
	$(BIN)/python bench/search_engines.py

bench-dense: install
	$(BIN)/python bench/dense_index.py

## MemVault put_many throughput on SQLite and PostgreSQL in one run.
bench-put-many: install
	$(BIN)/python bench/vault_put_many.py

## A 1 GiB KV cache up and down through the daemon on S3 (moto standing in) and on file:, next to the disk's bound.
bench-blob-s3: install
	$(BIN)/python bench/blob_s3.py

## The daemon's resident memory at 100k plaintext cubes on SQLite and on PostgreSQL (a throwaway server).
bench-memory: install
	$(BIN)/python bench/daemon_memory.py

## Several members on one PostgreSQL and a NATS bus: revocation lag, publish at A to receive at B, reads while another ingests.
bench-cluster: install
	$(BIN)/python bench/cluster_revocation.py
	$(BIN)/python bench/pubsub_cluster.py
	$(BIN)/python bench/cluster_reads.py

## 64 clients of mixed put/get/list/search for 60 s on SQLite: latency per call kind, errors, the daemon's RSS every 5 s.
bench-mixed: install
	$(BIN)/python bench/mixed_load.py

## Embedding: cubes/s of the daemon's encoder vs SentenceTransformer.encode, and the backfill through the daemon.
bench-embed: install
	$(BIN)/python bench/embed_rate.py

clean:
	rm -rf $(VENV) $(MEMOS_VENV) build dist *.egg-info .pytest_cache
