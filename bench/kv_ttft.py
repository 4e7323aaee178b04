"""Time to first token with and without activation memory, on a Qwen2-shaped model (24 layers, about 0.5B
parameters with random weights from its config, float32, CPU): a 1,024-token context plus a 16-token query,
full prefill versus find-pull-inject from the daemon (over its Unix socket, in another process).

    python bench/kv_ttft.py [--layers 24] [--context 1024] [--query 16] [--repeats 3] [--threads N]

The daemon path is what an agent does: FindByPrefix with the prompt's token ids, pull the cube's cache into
a fresh DynamicCache, run only the tokens after the matched prefix. The model's fingerprint is computed once
when the agent first uses the model (reported apart, like loading the model). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import add_model_args, build_model, serve  # noqa: E402  (bench/shared.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path; medians are reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for both paths (default: torch's own choice)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")  # the daemon must not inherit torch's threads
    sock_dir = Path(tempfile.mkdtemp(prefix="memosd-ttft-", dir="/tmp"))
    listen = f"unix:{sock_dir}/memosd.sock"
    with tempfile.TemporaryDirectory() as data_dir:
        ready, stop = ctx.Event(), ctx.Event()
        daemon = ctx.Process(target=serve, args=(data_dir, listen, ready, stop), daemon=True)
        daemon.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the daemon did not start")
            result = run(args, listen, Path(data_dir) / "admin.key")
        finally:
            stop.set()
            daemon.join(30)
            shutil.rmtree(sock_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def run(args, listen: str, key: Path) -> dict:
    import torch

    from memos_client import MemosClient
    from memos_mip.fingerprint import model_fingerprint
    from memos_mip.tensors import cache_keyword

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = build_model(args)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (1, args.context + args.query), generator=gen)
    context = prompt[:, :args.context]

    started = time.perf_counter()
    model_fingerprint(model)  # once per loaded model; cached on it afterwards
    fingerprint_s = time.perf_counter() - started

    with MemosClient(listen, key=str(key), timeout=600) as memos, torch.inference_mode():
        # One agent prefills the document once and stores its cache.
        cache = model(context, use_cache=True, logits_to_keep=1).past_key_values
        started = time.perf_counter()
        cube_id = memos.push_kv(cache, context, model)
        push_s = time.perf_counter() - started
        del cache

        full, daemon, parts = [], [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            logits_full = model(prompt, logits_to_keep=1).logits[0, -1]
            token_full = int(logits_full.argmax())
            full.append(time.perf_counter() - started)

            t0 = time.perf_counter()
            cube, matched = memos.find_kv(model_fingerprint(model), prompt[0].tolist())
            t1 = time.perf_counter()
            pulled = memos.pull_kv(cube.id, model, num_tokens=matched)
            t2 = time.perf_counter()
            logits_kv = model(prompt[:, matched:], **{cache_keyword(model): pulled}, logits_to_keep=1).logits[0, -1]
            token_kv = int(logits_kv.argmax())
            t3 = time.perf_counter()
            daemon.append(t3 - t0)
            parts.append((t1 - t0, t2 - t1, t3 - t2))
            assert cube.id == cube_id and matched == args.context
            del pulled
        diff = float((logits_full - logits_kv).abs().max())
        size = memos.get(cube_id).activation.blob.size

    full_s, daemon_s = statistics.median(full), statistics.median(daemon)
    return {
        "model": {"arch": "qwen2", "layers": args.layers, "hidden": args.hidden, "params": params, "dtype": "float32",
                  "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "context_tokens": args.context, "query_tokens": args.query, "cache_bytes": size,
        "full_prefill_ttft_s": round(full_s, 4), "daemon_ttft_s": round(daemon_s, 4),
        "reduction": round(1 - daemon_s / full_s, 4), "target_reduction": 0.90, "aim_reduction": 0.95,
        "daemon_breakdown_s": {name: round(statistics.median(p[i] for p in parts), 4)
                               for i, name in enumerate(("find_by_prefix", "pull_kv", "forward_query"))},
        "first_token_equal": token_full == token_kv, "max_abs_logit_diff": diff,
        "runs_full_s": [round(x, 3) for x in full], "runs_daemon_s": [round(x, 3) for x in daemon],
        "once": {"build_model_s": round(build_s, 2), "fingerprint_s": round(fingerprint_s, 3),
                 "push_kv_s": round(push_s, 3)},
    }


if __name__ == "__main__":
    sys.exit(main())
