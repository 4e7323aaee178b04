"""Loading a LoRA adapter through the daemon versus from a local PEFT directory, on a Qwen2-shaped model (24 layers,
about 0.5B parameters with random weights from its config, float32, CPU) and a rank-16 adapter on every linear
projection of every layer (the daemon over its Unix socket, in another process).

    python bench/adapter_load.py [--layers 24] [--rank 16] [--targets q_proj,k_proj,...] [--repeats 7] [--threads N]

Local: PeftModel.from_pretrained(base, directory) from a directory in the page cache, as is (the issue's
baseline) and with low_cpu_mem_usage=True (which skips initialising the LoRA weights it then overwrites, as the
daemon path does). Daemon: load_adapter(cube_id, base), which is Get, Download (1 MiB chunks, sha256-checked),
checks and the same injection. All in this process, in rotating order, each run on the same base model (the adapter
is unloaded between runs); medians are reported. The base
model's fingerprint is computed once when the agent first uses the model (reported apart, like building it). The
two loaded models' logits are compared. Prints one JSON object.
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

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default=TARGETS, help="comma-separated module names to adapt")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each path; medians are reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for both paths (default: torch's own choice)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")  # the daemon must not inherit torch's threads
    sock_dir = Path(tempfile.mkdtemp(prefix="memosd-adapter-", dir="/tmp"))
    listen = f"unix:{sock_dir}/memosd.sock"
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as work:
        ready, stop = ctx.Event(), ctx.Event()
        daemon = ctx.Process(target=serve, args=(data_dir, listen, ready, stop), daemon=True)
        daemon.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the daemon did not start")
            result = run(args, listen, Path(data_dir) / "admin.key", Path(work))
        finally:
            stop.set()
            daemon.join(30)
            shutil.rmtree(sock_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def run(args, listen: str, key: Path, work: Path) -> dict:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from memos_client import MemosClient
    from memos_mip.fingerprint import base_model_fingerprint

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = build_model(args)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in base.parameters())
    targets = args.targets.split(",")

    # The adapter: random (non-zero) rank-r LoRA weights, saved as PEFT saves them.
    torch.manual_seed(1)
    trained = get_peft_model(base, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets,
                                              init_lora_weights=False, task_type="CAUSAL_LM"))
    directory = work / "adapter"
    trained.save_pretrained(directory)
    adapter_bytes = (directory / "adapter_model.safetensors").stat().st_size
    base = trained.unload()
    del trained

    started = time.perf_counter()
    base_model_fingerprint(base)  # once per loaded model; cached on it afterwards
    fingerprint_s = time.perf_counter() - started
    ids = torch.randint(0, args.vocab, (1, 16), generator=torch.Generator().manual_seed(2))

    with MemosClient(listen, key=str(key), timeout=600) as memos, torch.inference_mode():
        started = time.perf_counter()
        cube_id = memos.push_adapter(directory, base)
        push_s = time.perf_counter() - started

        runs, outputs = {"local": [], "local_low_mem": [], "daemon": []}, {}
        order = list(runs)
        for i in range(args.repeats + 1):  # the first round warms every path up and is not counted
            for path in order[i % 3:] + order[:i % 3]:
                started = time.perf_counter()
                if path == "local":
                    model = PeftModel.from_pretrained(base, directory)
                elif path == "local_low_mem":
                    model = PeftModel.from_pretrained(base, directory, low_cpu_mem_usage=True)
                else:
                    model = memos.load_adapter(cube_id, base)
                elapsed = time.perf_counter() - started
                if i:
                    runs[path].append(elapsed)
                if i == 1:
                    outputs[path] = model(ids).logits
                base = model.unload()
                del model

    local_s, low_mem_s, daemon_s = (statistics.median(runs[p]) for p in order)
    diff = max(float((outputs["local"] - outputs[p]).abs().max()) for p in order)
    return {
        "model": {"arch": "qwen2", "layers": args.layers, "hidden": args.hidden, "params": params, "dtype": "float32",
                  "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "adapter": {"rank": args.rank, "targets": targets, "modules": args.layers * len(targets), "bytes": adapter_bytes},
        "local_from_pretrained_s": round(local_s, 4), "daemon_pull_and_load_s": round(daemon_s, 4),
        "ratio": round(daemon_s / local_s, 3), "target_ratio": 1.5, "within_target": daemon_s <= 1.5 * local_s,
        "local_from_pretrained_low_cpu_mem_usage_s": round(low_mem_s, 4),
        "ratio_vs_low_cpu_mem_usage": round(daemon_s / low_mem_s, 3),
        "max_abs_logit_diff": diff,
        "runs_s": {p: [round(x, 4) for x in runs[p]] for p in order},
        "once": {"build_model_s": round(build_s, 2), "fingerprint_s": round(fingerprint_s, 3),
                 "push_adapter_s": round(push_s, 3)},
    }


if __name__ == "__main__":
    sys.exit(main())
