"""KV caches of real (tiny, seeded) transformers models through the daemon: exact after a round trip, bound to
their model, fresh on every pull, found by prefix; each way of getting it wrong is refused."""

import asyncio

import pytest
import torch

from memos_client import FailedPrecondition, InvalidArgument, Kind, MemosClient, ModelMismatch
from memos_client.kv import cache_keyword
from memos_mip.fingerprint import model_fingerprint, tokenizer_fingerprint
from tests.kv_helpers import put_kv, tiny_model, tiny_tokenizer

TOLERANCE = 1e-5


def _prefill(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def _next_logits(model, ids, cache=None):
    with torch.no_grad():
        return model(ids, **{cache_keyword(model): cache}).logits[0, -1]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_pulled_cache_gives_the_logits_of_a_full_prefill(client, arch):
    model = tiny_model(arch)
    torch.manual_seed(1)
    ids = torch.randint(4, 128, (1, 70))
    prefix, query = ids[:, :54], ids[:, 54:]
    cube_id = client.push_kv(_prefill(model, prefix), prefix, model)
    cache = client.pull_kv(cube_id, model)
    assert type(cache).__name__ == "DynamicCache" and cache.get_seq_length() == 54
    full = _next_logits(model, ids)
    injected = _next_logits(model, query, cache)
    assert (full - injected).abs().max().item() <= TOLERANCE
    cube = client.get(cube_id)
    assert cube.kind is Kind.ACTIVATION and cube.text is None
    act = cube.activation
    assert act.token_ids == prefix[0].tolist() and act.num_layers == 2 and act.dtype == "float32"
    assert act.layers[0][0].shape == (1, 2, 54, 16) and act.model_fingerprint == model_fingerprint(model)


def test_legacy_tuple_cache_and_exact_tensors(client):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 20))
    cache = _prefill(model, ids)
    legacy = tuple((layer.keys, layer.values) for layer in cache.layers)
    cube_id = client.push_kv(legacy, ids[0].tolist(), model)
    pulled = client.pull_kv(cube_id, model)
    for (k, v), layer in zip(legacy, pulled.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
        assert layer.keys.dtype == torch.float32 and layer.keys.device.type == "cpu"


def test_a_stored_cache_is_never_changed_by_generation(client):
    model = tiny_model("qwen2")
    ids = torch.randint(4, 128, (1, 30))
    original = _prefill(model, ids)
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in original.layers]
    cube_id = client.push_kv(original, ids, model)
    first = client.pull_kv(cube_id, model)
    second = client.pull_kv(cube_id, model)
    assert first is not second and first.layers[0].keys.data_ptr() != second.layers[0].keys.data_ptr()
    model.generate(torch.cat([ids, torch.tensor([[7]])], 1), **{cache_keyword(model): first}, max_new_tokens=5, do_sample=False)
    assert first.get_seq_length() > 30  # generation grew the pulled copy...
    third = client.pull_kv(cube_id, model)
    for (k, v), layer, mine in zip(snapshot, third.layers, original.layers):  # ...never the stored one, nor ours
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
        assert torch.equal(k, mine.keys)
    assert client.get(cube_id).activation.blob.sha256 == client.get(cube_id).activation.blob.sha256


def test_generate_with_kv_matches_plain_generation(client):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 48))
    client.push_kv(_prefill(model, ids[:, :40]), ids[:, :40], model)
    calls = []
    original = MemosClient.pull_kv

    def counting(self, cube_id, m, **kw):
        calls.append(kw.get("num_tokens"))
        return original(self, cube_id, m, **kw)

    MemosClient.pull_kv = counting
    try:
        out = client.generate_with_kv(model, ids, max_new_tokens=6, do_sample=False)
    finally:
        MemosClient.pull_kv = original
    assert calls == [40]
    plain = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.tolist() == plain.tolist()


def test_find_by_prefix_returns_the_longest_shared_prefix(client):
    model = tiny_model("llama")
    fp = model_fingerprint(model)
    base = list(range(10, 60))  # 50 tokens: three whole blocks of 16 and two more
    short = put_kv(client, base[:20], fingerprint=fp)
    long = put_kv(client, base[:45], fingerprint=fp, seed=1)
    other_model = put_kv(client, base, fingerprint="cd" * 32, seed=2)
    cube, matched = client.find_kv(fp, base)
    assert cube.id == long.id and matched == 45
    cube, matched = client.find_kv(fp, base[:37] + [999, 998])  # diverges inside the third block
    assert cube.id == long.id and matched == 37
    cube, matched = client.find_kv(fp, base[:18])  # one whole block and two tokens
    assert cube.id in (short.id, long.id) and matched == 18
    cube, matched = client.find_kv(fp, base[:12] + [999] * 8)  # less than a whole block shared
    assert cube is None and matched == 0
    tiny = put_kv(client, base[:5], fingerprint=fp, seed=3)  # shorter than a block
    cube, matched = client.find_kv(fp, base[:3] + [1, 2])
    assert cube.id == tiny.id and matched == 3
    cube, matched = client.find_kv("cd" * 32, base)
    assert cube.id == other_model.id and matched == 50
    client.delete(long.id)
    cube, matched = client.find_kv(fp, base)
    assert cube.id == short.id and matched == 20
    assert client.find_kv(fp, base, "agents/admin/elsewhere") == (None, 0)


def test_find_by_prefix_only_sees_what_the_caller_may_read(client, daemon, tmp_path):
    put_kv(client, list(range(32)))
    client.add_agent("mallory", out=str(tmp_path / "m.key"))
    with MemosClient(daemon.address, key=str(tmp_path / "m.key")) as mallory:
        assert mallory.find_kv("ab" * 32, list(range(32))) == (None, 0)
        mine = put_kv(mallory, list(range(32)), "agents/mallory/kv")
        assert mallory.find_kv("ab" * 32, list(range(32)))[0].id == mine.id


def test_a_cache_is_refused_by_another_model(client):
    model = tiny_model("llama", seed=0)
    ids = torch.randint(4, 128, (1, 12))
    cube_id = client.push_kv(_prefill(model, ids), ids, model, tokenizer=tiny_tokenizer())
    other_weights = tiny_model("llama", seed=1)
    other_config = tiny_model("llama", seed=0, rope_theta=5000.0)
    other_arch = tiny_model("qwen2", seed=0)
    for other in (other_weights, other_config, other_arch):
        with pytest.raises(ModelMismatch, match="fingerprint"):
            client.pull_kv(cube_id, other)
    with pytest.raises(ModelMismatch, match="fingerprint"):
        client.pull_kv(cube_id, model.to(torch.float64))
    model.to(torch.float32)
    from transformers import PreTrainedTokenizerFast

    other_tokenizer = tiny_tokenizer()
    other_tokenizer = PreTrainedTokenizerFast(tokenizer_object=other_tokenizer.backend_tokenizer, bos_token="<x>")
    with pytest.raises(ModelMismatch, match="tokenizer"):
        client.pull_kv(cube_id, model, tokenizer=other_tokenizer)
    assert client.pull_kv(cube_id, model, tokenizer=tiny_tokenizer()).get_seq_length() == 12


def test_fingerprints_survive_save_and_load_and_follow_weight_changes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_model("qwen2"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", local_files_only=True)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "tokenizer")) == tokenizer_fingerprint(tokenizer)
    # Saved next to a qwen2 config, transformers loads it as a Qwen2Tokenizer that splits text differently:
    # the fingerprint tells them apart.
    tokenizer.save_pretrained(tmp_path / "model")
    as_qwen2 = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert as_qwen2("alice likes tea, bob.").input_ids != tokenizer("alice likes tea, bob.").input_ids
    assert tokenizer_fingerprint(as_qwen2) != tokenizer_fingerprint(tokenizer)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0  # in place: the cached fingerprint must notice
    assert model_fingerprint(model) != before


@pytest.mark.parametrize("problem", ["dtype", "layers", "tokens", "batch", "not a cache", "empty"])
def test_pushing_a_cache_that_does_not_fit_the_model_is_refused(client, problem):
    model = tiny_model("llama")
    ids = torch.randint(4, 128, (1, 10))
    layers = [(layer.keys, layer.values) for layer in _prefill(model, ids).layers]
    bad = {
        "dtype": [(k.half(), v.half()) for k, v in layers],
        "layers": layers[:1],
        "tokens": [(k[:, :, :9], v[:, :, :9]) for k, v in layers],
        "batch": [(torch.cat([k, k]), torch.cat([v, v])) for k, v in layers],
        "not a cache": {"keys": 1},
        "empty": [(torch.empty(1, 2, 0, 16), torch.empty(1, 2, 0, 16))] * 2,
    }[problem]
    with pytest.raises(InvalidArgument):
        client.push_kv(bad, ids, model)


def test_a_plaintext_cube_is_not_a_cache(client):
    model = tiny_model("llama")
    text = client.put("not a cache", "agents/admin/notes")
    with pytest.raises(FailedPrecondition, match="plaintext"):
        client.pull_kv(text.id, model)


def test_shapes_and_layer_count_of_the_manifest_are_checked_on_pull(client):
    """A cube claiming this model's fingerprint but holding tensors of another shape is refused on pull."""
    model = tiny_model("llama")
    cube = put_kv(client, list(range(8)), fingerprint=model_fingerprint(model))  # head_dim 4, not 16
    with pytest.raises(ModelMismatch, match="shape"):
        client.pull_kv(cube.id, model)
    three = tiny_model("llama", layers=3)
    cube3 = client.push_kv(_prefill(three, torch.tensor([[5, 6, 7]])), [5, 6, 7], three)
    with pytest.raises(ModelMismatch):
        client.pull_kv(cube3, model)


def test_async_push_pull_and_generate(aclient_factory):
    model = tiny_model("qwen2")
    ids = torch.randint(4, 128, (1, 24))

    async def scenario():
        async with aclient_factory() as client:
            cube_id = await client.push_kv(_prefill(model, ids[:, :20]), ids[:, :20], model)
            cache = await client.pull_kv(cube_id, model)
            out = await client.generate_with_kv(model, ids, max_new_tokens=3, do_sample=False)
            return cache, out

    cache, out = asyncio.run(scenario())
    assert (_next_logits(model, ids) - _next_logits(model, ids[:, 20:], cache)).abs().max() <= TOLERANCE
    assert out.tolist() == model.generate(ids, max_new_tokens=3, do_sample=False).tolist()
