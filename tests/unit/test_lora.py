"""LoRA (rlkit/lora.py): config checks, only adapters train, merged sync weights, adapter-disabled reference,
export round trip. Tiny local model, float32, a few seconds."""


import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlkit.config import ConfigError, ModelConfig, load_config
from rlkit.forward import token_logprobs
from rlkit.lora import AdapterDisabledReference, merged_state, use_adapter_sync, vllm_max_lora_rank
from rlkit.lora_export import export_merged
from rlkit.modeling import load_causal_lm
from rlkit.rollout.weights import sync_state

BASE = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
        "reward": {"functions": [{"name": "exact_match"}]}}
PROMPTS = [[5, 6, 7, 8], [9, 10]]
RESPONSE = torch.tensor([[20, 21, 22], [23, 24, 25]])                 # [2, 3]
MASK = torch.tensor([[True, True, True], [True, True, False]])        # [2, 3]


def _load(*overrides):
    return load_config(None, list(overrides), base=BASE)


def _logprobs(model) -> torch.Tensor:
    with torch.no_grad():
        return token_logprobs(model, PROMPTS, RESPONSE, MASK, pad_id=0)[0]     # [2, 3]


def _policy(model_dir, **lora):
    return load_causal_lm(ModelConfig(name_or_path=str(model_dir), lora={"r": 4, "alpha": 8.0, **lora}))


def _train(policy, steps: int = 2, lr: float = 1e-2):
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        lp, _ = token_logprobs(policy, PROMPTS, RESPONSE, MASK, pad_id=0)
        (-lp.sum()).backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """A LoRA policy after two optimizer steps, and the initial base weights."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = _policy(tiny_model_dir)
    _train(policy)
    return policy, base


def test_config_validation():
    cfg = _load("model.lora.r=8")
    assert cfg.model.lora.r == 8 and cfg.model.lora.alpha == 32 and cfg.model.lora.target_modules == "all-linear"
    assert _load().model.lora is None                     # default: full fine-tuning
    with pytest.raises(ConfigError, match=r"model\.lora\.r: .*greater than 0.*0"):
        _load("model.lora.r=0")
    with pytest.raises(ConfigError, match=r"unknown key 'model\.lora\.rank'.*valid here: r, alpha, dropout"):
        _load("model.lora.rank=8")
    with pytest.raises(ConfigError, match="non-empty list of module names"):
        load_config(None, ["model.lora.target_modules=[]"], base=BASE)
    with pytest.raises(ConfigError, match=r"model\.lora\.sync"):
        _load("model.lora.sync=full")
    with pytest.raises(ConfigError, match=r"model\.lora\.dropout"):
        _load("model.lora.dropout=1.5")
    assert _load("model.lora.sync=adapter", "rollout.engine.name=vllm_server").model.lora.sync == "adapter"
    assert _load("model.lora.sync=auto", "rollout.engine.name=vllm_server").model.lora.sync == "auto"


def test_sync_mode_resolution():
    lora = _load("model.lora.r=8").model.lora                                 # auto, all-linear
    assert use_adapter_sync(None) is False and use_adapter_sync(lora) is True
    assert use_adapter_sync(lora.model_copy(update={"sync": "merged"})) is False
    head = lora.model_copy(update={"target_modules": ["q_proj", "lm_head"]})
    assert use_adapter_sync(head) is False                                    # auto: vLLM cannot serve lm_head
    with pytest.raises(ValueError, match=r"sync=adapter, but vLLM LoRA does not serve adapters on \['lm_head'\]"):
        use_adapter_sync(head.model_copy(update={"sync": "adapter"}))
    assert vllm_max_lora_rank(4) == 8 and vllm_max_lora_rank(16) == 16 and vllm_max_lora_rank(17) == 32
    with pytest.raises(ValueError, match="model.lora.r=1000"):
        vllm_max_lora_rank(1000)


def test_bad_target_module_names_the_layers(tiny_model_dir):
    with pytest.raises(ValueError, match=r"target_modules=\['qproj'\].*q_proj"):
        _policy(tiny_model_dir, target_modules=["qproj"])


def test_only_adapters_train(trained):
    policy, base = trained
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 4 layers x 7 Linear (q k v o gate up down) x (A, B); lm_head (tied to embeddings) is not targeted
    assert len(trainable) == 4 * 7 * 2
    for n, p in policy.named_parameters():
        if p.requires_grad:   # step 1 moves B (zero init, so A's grad is 0); step 2 moves A as well
            init = torch.zeros_like(p) if ".lora_B." in n else None
            assert init is None or not torch.equal(p, init), n
    base_state = base.state_dict()
    for key, tensor in policy.get_base_model().state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(tensor, base_state[key.replace(".base_layer.", ".")]), key   # bit-identical


def test_merged_state_names_and_formula(tiny_model_dir, trained):
    policy, base = trained
    state = merged_state(policy)
    assert list(state) == list(base.state_dict())                                  # exactly the base's names
    layer = policy.get_base_model().model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight          # [4, 128], [128, 4]
    w = base.state_dict()["model.layers.0.self_attn.q_proj.weight"]               # [128, 128]
    torch.testing.assert_close(state["model.layers.0.self_attn.q_proj.weight"], w + (8.0 / 4) * b @ a)
    assert torch.equal(state["model.norm.weight"], base.state_dict()["model.norm.weight"])
    assert sync_state(policy).keys() == state.keys()                               # the sync hook uses it
    # hand-checked: A = 0.5, B = 0.25 everywhere, r = 4, alpha = 8 -> (8/4) * sum_k 0.25*0.5 = 2 * 4 * 0.125 = 1.0
    fresh = _policy(tiny_model_dir)
    q = fresh.get_base_model().model.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.lora_A["default"].weight.fill_(0.5)
        q.lora_B["default"].weight.fill_(0.25)
    merged = merged_state(fresh)["model.layers.1.self_attn.q_proj.weight"]
    w1 = base.state_dict()["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(merged - w1, torch.ones_like(w1))
    assert torch.equal(q.base_layer.weight, w1)                                    # out of place


def test_merged_weights_reproduce_policy(trained):
    policy, base = trained
    plain = AutoModelForCausalLM.from_pretrained(base.config._name_or_path)
    plain.load_state_dict(merged_state(policy))
    policy.eval()
    torch.testing.assert_close(_logprobs(plain), _logprobs(policy), atol=1e-5, rtol=0)
    policy.train()


def test_reference_is_base_model_with_adapter_off(trained):
    policy, base = trained
    ref = AdapterDisabledReference(policy)
    policy.train()
    assert ref.eval() is ref and policy.training                                  # the policy's mode is its own
    ref_lp, base_lp = _logprobs(ref), _logprobs(base.eval())
    assert torch.equal(ref_lp, base_lp)                                           # exactly the base model
    assert policy.training                                                        # restored after the call
    policy.eval()
    assert (_logprobs(policy) - base_lp).abs().max() > 1e-3                       # the adapter did change pi
    policy.train()
    assert next(ref.parameters()).dtype == torch.float32


def _run_dir(tmp_path, model_dir, policy=None, lora=True):
    run = tmp_path / "run"
    tree = {**BASE, "model": {"name_or_path": str(model_dir), **({"lora": {"r": 4, "alpha": 8.0}} if lora else {})}}
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    if policy is not None:
        policy.save_pretrained(run / "final")
    return run


def test_export_round_trip(tmp_path, tiny_model_dir, trained):
    policy, _ = trained
    run = _run_dir(tmp_path, tiny_model_dir, policy)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "final").iterdir()}
    out = export_merged(run)
    assert out == run / "merged"
    merged = AutoModelForCausalLM.from_pretrained(out)
    policy.eval()
    torch.testing.assert_close(_logprobs(merged), _logprobs(policy), atol=1e-5, rtol=0)
    policy.train()


def test_export_errors_name_the_path(tmp_path, tiny_model_dir, capsys):
    from rlkit.cli import main
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert f"run directory '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    run = _run_dir(tmp_path, tiny_model_dir)
    assert main(["export", str(run)]) == 2
    assert f"'{run / 'final'}' has no adapter_config.json" in capsys.readouterr().err
    assert main(["export", str(run), "--checkpoint", "latest"]) == 2
    assert "has no checkpoints" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(full / "final")
    assert main(["export", str(full)]) == 2
    assert "already is a full Hugging Face checkpoint" in capsys.readouterr().err


def test_gradient_checkpointing_reaches_the_adapters(tiny_model_dir):
    # frozen embeddings + checkpointed blocks: the adapters still get gradients. (transformers 5.19 checkpoints
    # non-reentrantly by default, which works even without apply_lora's enable_input_require_grads; that call
    # guards the re-entrant mode, where the adapters would otherwise get no gradient.)
    policy = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir), gradient_checkpointing=True,
                                        lora={"r": 4, "alpha": 8.0}))
    assert policy.get_base_model().is_gradient_checkpointing
    lp, _ = token_logprobs(policy, PROMPTS, RESPONSE, MASK, pad_id=0)
    (-lp.sum()).backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(grads[n].abs().sum() > 0 for n in grads if ".lora_B." in n)   # B gets grad at step 0 (A != 0)
