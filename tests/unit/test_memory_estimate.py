"""The dry-run memory estimate of ``rlkit show``: exact parameter counts, hand-computed bytes per component."""

from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM, Qwen2Config

from rlkit.cli import main
from rlkit.config import load_config
from rlkit.memory_estimate import GIB, ModelShape, estimate_memory, lora_parameter_count, model_shape
from tests.conftest import TEST_REWARDS

# Qwen2.5-1.5B's architecture (config.json of the hub checkpoint), written locally: no hub needed.
Q15 = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
           intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)


def _recipe(model_dir, **sections):
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": "unused.jsonl"},
            "reward": {"functions": [{"name": f"{TEST_REWARDS}:digit_fraction"}]}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_config(None, base=base)


@pytest.fixture(scope="module")
def q15_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("q15")
    Qwen2Config(**Q15).save_pretrained(path)
    return path


def test_parameter_count_of_qwen2_5_1_5b_by_hand(q15_dir):
    H, L, I, V, kv = 1536, 28, 8960, 151936, 2 * 128       # kv width = kv_heads * head_dim
    per_layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H   # q, k, v (biased), o, MLP, 2 norms
    expected = V * H + L * per_layer + H                                    # tied embeddings, final norm
    shape = model_shape(_recipe(q15_dir))
    assert shape.params == expected == 1_543_714_304
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab, shape.kv_heads, shape.head_dim) == \
        (28, 1536, 8960, 151936, 2, 128)


def test_parameter_count_matches_the_loaded_tiny_model(tiny_model_dir):
    shape = model_shape(_recipe(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.params == sum(p.numel() for p in model.parameters()) == 1_026_176


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_parameter_count_matches_peft(tiny_model_dir, targets):
    from peft import LoraConfig, get_peft_model
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours = lora_parameter_count(model, SimpleNamespace(r=8, target_modules=targets))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    assert ours == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if targets != "all-linear":   # 4 layers x (q: 128->128, v: 128->64) x r=8, by hand
        assert ours == 4 * 8 * ((128 + 128) + (128 + 64))


SHAPE = ModelShape(params=1_000_000_000, layers=10, hidden=1000, intermediate=4000, vocab=100_000, kv_heads=2,
                   head_dim=100)


def _rows(est):
    return {name: nbytes for name, nbytes, _ in est.rows}


def test_full_fine_tuning_ddp_bytes(tmp_path):
    cfg = _recipe(tmp_path, model={"dtype": "bfloat16"},
                  train={"micro_batch_size": 2, "mixed_precision": "bf16"},
                  rollout={"max_new_tokens": 100, "engine": {"name": "hf"}}, data={"max_prompt_tokens": 28})
    est = estimate_memory(cfg, SHAPE, world=4, sharding="none", needs_ref=True)
    rows = _rows(est)
    assert rows["policy weights"] == 2e9 and rows["gradients"] == 2e9        # bf16, replicated under DDP
    assert rows["optimizer (AdamW)"] == 4e9                                   # 2 moments x 2 B
    assert rows["reference model"] == 2e9
    tokens = 2 * (28 + 100)                                                   # micro_batch_size x S
    assert rows["activations"] == tokens * 10 * (8 * 1000 + 4 * 4000) * 2
    assert rows["logits / log-probs"] == 256 * 100_000 * 12                 # "auto" (2**26 // V = 671) > 256 tokens
    assert est.train_bytes == pytest.approx(sum(v for k, v in rows.items() if "KV" not in k))


def test_sharding_divides_what_it_shards(tmp_path):
    cfg = _recipe(tmp_path, model={"dtype": "bfloat16"}, train={"mixed_precision": "bf16"})
    by = {s: _rows(estimate_memory(cfg, SHAPE, world=8, sharding=s))
          for s in ("none", "zero2", "zero3", "fsdp2", "fsdp2_offload")}
    assert by["zero2"]["policy weights"] == 2e9 and by["zero2"]["gradients"] == 2e9 / 8
    assert by["zero2"]["optimizer (AdamW)"] == 12e9 / 8                       # fp32 master + fp32 moments
    assert by["zero3"]["policy weights"] == 2e9 / 8
    assert by["fsdp2"]["policy weights"] == 2e9 / 8 and by["fsdp2"]["optimizer (AdamW)"] == 4e9 / 8
    assert by["fsdp2_offload"]["policy weights"] == 0 and by["fsdp2_offload"]["optimizer (AdamW)"] == 0


def test_lora_shrinks_optimizer_and_drops_the_reference(tmp_path):
    cfg = _recipe(tmp_path)
    lora = ModelShape(**{**SHAPE.__dict__, "lora_params": 5_000_000})
    rows = _rows(estimate_memory(cfg, lora, needs_ref=True))
    assert rows["gradients"] == 5_000_000 * 4 and rows["optimizer (AdamW)"] == 5_000_000 * 8
    assert rows["reference model"] == 0 and rows["policy weights"] == 4e9


def test_chunked_logprobs_and_gradient_checkpointing(tmp_path):
    cfg = _recipe(tmp_path, model={"gradient_checkpointing": True}, train={"micro_batch_size": 1},
                  rollout={"max_new_tokens": 744}, data={"max_prompt_tokens": 280})
    cfg.train.logprob_chunk_tokens = 256
    rows = _rows(estimate_memory(cfg, SHAPE))
    assert rows["activations"] == 1024 * 10 * 1000 * 4 + 1024 * (8 * 1000 + 4 * 4000) * 4
    assert rows["logits / log-probs"] == 256 * 100_000 * 12
    cfg.train.logprob_chunk_tokens = "auto"                  # 2**26 // 100_000 = 671 positions per chunk
    assert _rows(estimate_memory(cfg, SHAPE))["logits / log-probs"] == 671 * 100_000 * 12
    cfg.train.logprob_chunk_tokens = 0                       # full logits of the 1024-token micro-batch
    assert _rows(estimate_memory(cfg, SHAPE))["logits / log-probs"] == 1024 * 100_000 * 12
    cfg.train.max_tokens_per_micro = 512                     # the token budget bounds a micro-batch
    rows = _rows(estimate_memory(cfg, SHAPE))
    assert rows["logits / log-probs"] == 512 * 100_000 * 12


def test_vllm_engine_budget_and_kv_note(tmp_path):
    cfg = _recipe(tmp_path, rollout={"engine": {"name": "vllm", "gpu_memory_utilization": 0.5}, "n": 2,
                                     "max_new_tokens": 100}, train={"prompts_per_step": 4},
                  data={"max_prompt_tokens": 28})
    est = estimate_memory(cfg, SHAPE, device_gib=10)
    assert _rows(est)["vLLM engine"] == 5 * GIB
    assert est.rollout_bytes == 4e9 + 8e9 + 5 * GIB          # weights + AdamW kept, gradients freed, + engine
    kv = 8 * 128 * (2 * 10 * 2 * 100 * 4)                     # completions x S x per-token K and V
    assert f"{kv / GIB:.2f} GiB" in est.notes[0] and "1.27 GiB" in est.notes[0]   # 5 GiB - 4e9 B of weights
    assert "too small" not in est.notes[0]
    cfg.train.prompts_per_step = 512                           # 1024 completions x 128 tokens x 16 kB > 1.27 GiB
    assert "too small" in estimate_memory(cfg, SHAPE, device_gib=10).notes[0]


def test_bad_topology_is_named(tmp_path):
    with pytest.raises(ValueError, match="sharding 'zero4'"):
        estimate_memory(_recipe(tmp_path), SHAPE, sharding="zero4")


def test_show_prints_the_estimate(q15_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: {q15_dir}, dtype: bfloat16}}\ndata: {{train: x.jsonl}}\n"
                      f"reward: {{functions: [{{name: '{TEST_REWARDS}:digit_fraction'}}]}}\n")
    assert main(["show", str(recipe), "--num-processes", "8", "--sharding", "fsdp2"]) == 0
    out = capsys.readouterr().out
    assert "memory estimate per device (8 processes, sharding: fsdp2" in out
    assert "1.54B params x 2 B, sharded over 8" in out


def test_show_without_a_readable_model_config_says_so(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: {tmp_path}/missing}}\ndata: {{train: x.jsonl}}\n"
                      f"reward: {{functions: [{{name: '{TEST_REWARDS}:digit_fraction'}}]}}\n")
    assert main(["show", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "no memory estimate" in out and f"{tmp_path}/missing" in out
