"""What the benchmarks share: their JSON out (emit), a daemon in a child process and a Qwen2-shaped model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path


def serve(data_dir: str, listen: str, ready, stop, max_blob_bytes: int = 0) -> None:
    """Run the real daemon (build_server) until `stop` is set; `ready` once it listens. A process target."""
    from memosd.config import Config
    from memosd.limits import Limits
    from memosd.server import build_server

    async def main():
        limits = Limits(max_blob_bytes=max_blob_bytes) if max_blob_bytes else Limits()
        server = build_server(Config(data_dir=Path(data_dir), listen=listen, log_level="warning",
                                     sweep_interval=3600, limits=limits))
        await server.start()
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110 (stop is a threading.Event the bench's thread sets)
            await asyncio.sleep(0.05)
        await server.stop(grace=1)

    asyncio.run(main())


def add_model_args(parser) -> None:
    """The model's shape; the defaults are Qwen2.5-0.5B's (24 layers, about 0.49B parameters)."""
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=151936)


def build_model(args):
    """A Qwen2 causal LM of that shape with seeded random weights (no download)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=32768, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def emit(result: dict, output: Path | None) -> None:
    """Print the benchmark's JSON, and keep it in `output` when one is given."""
    text = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    print(text)
