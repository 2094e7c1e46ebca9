"""Integration: real RL steps on the tiny local model with the hf engine (CPU)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlkit.config import load_config
from tests.conftest import TEST_PLUGINS, TEST_REWARDS, recipe_dict


def _params(path):
    return load_file(str(path / "model.safetensors"))


def _train(tiny_model_dir, arith_data, out, overrides=(), **train):
    from rlkit.trainer import train as run
    cfg = load_config(None, list(overrides), base=recipe_dict(tiny_model_dir, arith_data, out, **train))
    return run(cfg)


def test_two_steps_change_parameters(tiny_model_dir, arith_data, tmp_path):
    out = tmp_path / "run"
    metrics = _train(tiny_model_dir, arith_data, out, ["train.eval_at_end=true", "train.sample_every=1"])
    before, after = _params(tiny_model_dir), _params(out / "final")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, "most parameter tensors should move after 2 RL steps"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/total" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("loss/total", "reward/mean", "loss/entropy", "train/grad_norm", "time/generate"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert "after/eval/accuracy" in metrics
    assert (out / "samples.jsonl").is_file() and (out / "checkpoints" / "step_000002").is_dir()


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_model_dir, arith_data, tmp_path):
    # N=4 steps in one go vs 2 steps, then resume to 4, with 2 PPO epochs and 2 mini-batches per step
    common = ["train.epochs=2", "train.mini_batches=2", "train.micro_batch_size=4"]
    _train(tiny_model_dir, arith_data, tmp_path / "full", common, steps=4)
    _train(tiny_model_dir, arith_data, tmp_path / "split", common, steps=2)
    _train(tiny_model_dir, arith_data, tmp_path / "split", common, steps=4)
    full, split = _params(tmp_path / "full" / "final"), _params(tmp_path / "split" / "final")
    for k in full:
        assert torch.allclose(full[k], split[k], atol=1e-5), k
    read = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    losses_full = [r["loss/total"] for r in read("full") if "loss/total" in r]
    losses_split = [r["loss/total"] for r in read("split") if "loss/total" in r]
    assert losses_split == pytest.approx(losses_full, abs=1e-5)


# Adam's first step is ~ lr * sign(g) where |g| >> adam_eps: float summation-order noise (1e-10) on a near-zero
# gradient entry would flip its sign and move that weight by ~2*lr. adam_eps=1e-4 keeps the update linear in
# such tiny entries, so the comparison checks the gradients, not Adam's sign amplification.
INVARIANCE = ["train.adam_eps=1e-4"]


def test_micro_batch_size_does_not_change_the_update(tiny_model_dir, arith_data, tmp_path):
    _train(tiny_model_dir, arith_data, tmp_path / "a", INVARIANCE + ["train.micro_batch_size=16",
                                                                     "train.max_tokens_per_micro=null"], steps=1)
    _train(tiny_model_dir, arith_data, tmp_path / "b", INVARIANCE + ["train.micro_batch_size=3",
                                                                     "train.max_tokens_per_micro=null"], steps=1)
    a, b = _params(tmp_path / "a" / "final"), _params(tmp_path / "b" / "final")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_token_budget_micro_batches_do_not_change_the_update(tiny_model_dir, arith_data, tmp_path):
    # fixed micro-batches of 3 rows with full logits vs packed (padding-free) micro-batches of <= 40 tokens with the
    # chunked LM head, vs the padded token-budget fallback, and vs the default (auto: 3 x the longest row, padded
    # on sdpa): the same parameters after one update
    _train(tiny_model_dir, arith_data, tmp_path / "a", INVARIANCE + ["train.micro_batch_size=3",
                                                                     "train.max_tokens_per_micro=null",
                                                                     "train.logprob_chunk_tokens=0"], steps=1)
    _train(tiny_model_dir, arith_data, tmp_path / "b", INVARIANCE + ["train.max_tokens_per_micro=40",
                                                                     "train.pack_sequences=true",
                                                                     "train.logprob_chunk_tokens=5"], steps=1)
    _train(tiny_model_dir, arith_data, tmp_path / "c", INVARIANCE + ["train.max_tokens_per_micro=40",
                                                                     "train.pack_sequences=false"], steps=1)
    _train(tiny_model_dir, arith_data, tmp_path / "d", INVARIANCE + ["train.micro_batch_size=3"], steps=1)
    a, b, c, d = (_params(tmp_path / d / "final") for d in "abcd")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
        assert torch.allclose(a[k], c[k], atol=1e-5), k
        assert torch.allclose(a[k], d[k], atol=1e-5), k


def test_token_budget_with_critic_does_not_change_the_update(tiny_model_dir, arith_data, tmp_path):
    # PPO-GAE: the critic's scoring pass and value loss use the same token-budget micro-batches (reordered rows)
    ppo = INVARIANCE + ["advantage={name: gae}", "losses=[{name: ppo_clip}, {name: value}]", "critic={lr: 1.0e-3}"]
    _train(tiny_model_dir, arith_data, tmp_path / "a", ppo + ["train.micro_batch_size=3",
                                                              "train.max_tokens_per_micro=null"], steps=2)
    _train(tiny_model_dir, arith_data, tmp_path / "b", ppo + ["train.max_tokens_per_micro=40",
                                                              "train.pack_sequences=true"], steps=2)
    for name in ("model.safetensors", "critic.safetensors"):
        a, b = (load_file(str(tmp_path / d / "final" / name)) for d in "ab")
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (name, k)


def test_bf16_autocast_trains_with_fp32_weights(tiny_model_dir, arith_data, tmp_path):
    metrics = _train(tiny_model_dir, arith_data, tmp_path / "bf16", ["train.mixed_precision=bf16",
                                                                     "train.max_tokens_per_micro=64",
                                                                     "train.pack_sequences=true"], steps=2)
    assert math.isfinite(metrics["loss/total"]) and math.isfinite(metrics["train/grad_norm"])
    before, after = _params(tiny_model_dir), _params(tmp_path / "bf16" / "final")
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


class TestBadInputFailsBeforeModelLoads:
    def _check(self, tiny_model_dir, arith_data, tmp_path, overrides, match, exc=Exception):
        from rlkit.session import check_recipe
        cfg = load_config(None, overrides, base=recipe_dict(tiny_model_dir, arith_data, tmp_path))
        with pytest.raises(exc, match=match):
            check_recipe(cfg)

    def test_missing_dataset_file(self, tiny_model_dir, arith_data, tmp_path):
        self._check(tiny_model_dir, arith_data, tmp_path, [f"data.train={tmp_path}/nope.jsonl"],
                    r"data.train '.*nope.jsonl' does not exist", FileNotFoundError)

    def test_missing_reward_module(self, tiny_model_dir, arith_data, tmp_path):
        self._check(tiny_model_dir, arith_data, tmp_path, [f"reward.functions.0.name={tmp_path}/r.py:f"],
                    r"plug-in file not found: '.*r.py'")
        self._check(tiny_model_dir, arith_data, tmp_path, ["reward.functions.0.name=no_such_mod:f"],
                    r"cannot import module 'no_such_mod'")

    def test_bad_reward_signature(self, tiny_model_dir, arith_data, tmp_path):
        self._check(tiny_model_dir, arith_data, tmp_path, [f"reward.functions.0.name={TEST_REWARDS}:wrong_signature"],
                    r"(?s)completions.*solution_str.*ground_truth")

    def test_missing_model_dir(self, tiny_model_dir, arith_data, tmp_path):
        self._check(tiny_model_dir, arith_data, tmp_path, [f"model.name_or_path={tmp_path}/nomodel"],
                    r"model.name_or_path '.*nomodel' is not a directory", FileNotFoundError)


def test_nan_loss_stops_with_clear_error(tiny_model_dir, arith_data, tmp_path):
    from rlkit.update import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm.*max_nan_steps=0"):
        _train(tiny_model_dir, arith_data, tmp_path / "nan", [f"losses.0.name={TEST_PLUGINS}:NaNLoss"])
    # with a tolerance, the bad update is skipped (counted) instead
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        _train(tiny_model_dir, arith_data, tmp_path / "nan2", [f"losses.0.name={TEST_PLUGINS}:NaNLoss",
                                                               "train.max_nan_steps=1"])


def test_reward_failing_everywhere_stops(tiny_model_dir, arith_data, tmp_path):
    from rlkit.rewards import RewardFailure
    with pytest.raises(RewardFailure, match=r"always_raises.*failed on all.*reward backend is down"):
        _train(tiny_model_dir, arith_data, tmp_path / "rf", [f"reward.functions.0.name={TEST_REWARDS}:always_raises"])


def test_interrupt_saves_checkpoint_and_resumes(tiny_model_dir, arith_data, tmp_path):
    import tests.plugin_fixtures as fx
    fx.InterruptOnCall.calls = 0
    out = tmp_path / "int"
    overrides = [f"losses.0.name={TEST_PLUGINS}:InterruptOnCall", "train.micro_batch_size=64"]
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_dir, arith_data, out, overrides, steps=3)   # step 1 done, interrupted in step 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000001"]
    _train(tiny_model_dir, arith_data, out, overrides, steps=3)       # resumes at step 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [1, 2, 3]


def test_kl_to_reference_and_bf16(tiny_model_dir, arith_data, tmp_path):
    # beta > 0 loads a frozen reference model; after 2 updates the policy has moved away from it, so KL > 0
    out = tmp_path / "kl"
    _train(tiny_model_dir, arith_data, out, ["losses=[{name: ppo_clip, dual_clip: 3.0}, {name: kl, beta: 0.1, "
                                             "estimator: k3}]"], steps=3)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/kl" in x]
    assert rows[0]["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[-1]["loss/kl"] > 1e-6
    metrics = _train(tiny_model_dir, arith_data, tmp_path / "bf16", ["train.mixed_precision=bf16"], steps=1)
    assert math.isfinite(metrics["loss/total"])
