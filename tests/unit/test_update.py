"""rlkit.update.Updater: its NaN-step counter is state (saved by the trainer's checkpoint, restored on resume), so
a resumed run stops after the same number of non-finite steps as an uninterrupted one."""

import contextlib

import pytest
import torch
from accelerate import Accelerator

from rlkit.build import Plugins
from rlkit.forward import ForwardSpec
from rlkit.trainer import _trainer_state
from rlkit.update import NonFiniteLossError, Updater, UpdateSchedule, _optimizer_step


def _updater(max_nan_steps: int) -> Updater:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return Updater(Accelerator(cpu=True), model, ForwardSpec(pad_id=0), opt, sched, losses=[], aggregation=None,
                   schedule=UpdateSchedule(max_nan_steps=max_nan_steps))


def _nan_gradient(up: Updater) -> None:
    up.model(torch.full((1, 2), float("nan"))).sum().backward()


def test_nan_counter_survives_a_checkpoint_and_stops_the_resumed_run_on_time():
    up = _updater(max_nan_steps=1)
    _nan_gradient(up)
    norm, applied = _optimizer_step(up)                # first non-finite step: skipped, tolerated
    assert norm != norm and not applied and up.nan_steps == 1
    plugins = Plugins(sampler=None, objective=None, advantage=None, selection=None, losses=[], aggregation=None)
    plugins.all = dict                                   # no plug-in state in this test
    state = _trainer_state(plugins, up, step=3, position=12)
    assert state["updater"] == {"nan_steps": 1} and state["step"] == 3 and state["data_position"] == 12

    resumed = _updater(max_nan_steps=1)
    resumed.load_state_dict(state["updater"])
    assert resumed.nan_steps == 1
    _nan_gradient(resumed)
    with pytest.raises(NonFiniteLossError, match=r"in 2 consecutive optimizer step\(s\).*max_nan_steps=1"):
        _optimizer_step(resumed)                       # the second in a row, as without the interruption

    fresh = _updater(max_nan_steps=1)
    fresh.load_state_dict({})                          # a checkpoint written before the counter was saved
    _nan_gradient(fresh)
    assert _optimizer_step(fresh)[1] is False and fresh.nan_steps == 1


def test_a_finite_step_resets_the_counter_and_applies_the_update():
    up = _updater(max_nan_steps=3)
    up.load_state_dict({"nan_steps": 2})
    before = up.model.weight.detach().clone()
    up.model(torch.ones(1, 2)).sum().backward()        # d/dw sum(w x + b) = x = [1, 1]
    norm, applied = _optimizer_step(up)
    assert applied and up.nan_steps == 0 and norm == pytest.approx(3 ** 0.5)   # |[1, 1, 1]| with the bias
    # clipped to max_grad_norm 1 (the schedule's default): gradient 1 / sqrt(3) per entry, SGD with lr 0.1
    torch.testing.assert_close(up.model.weight.detach(), before - 0.1 / 3 ** 0.5)


def test_forward_spec_packs_only_token_budget_micro_batches():
    spec = ForwardSpec(pad_id=0, max_tokens_per_micro=None, pack_sequences=True, autocast=contextlib.nullcontext)
    assert not spec.packed                             # fixed micro-batches are right-padded rows
    assert ForwardSpec(pad_id=0, max_tokens_per_micro="auto", pack_sequences=True).packed
    assert not ForwardSpec(pad_id=0, max_tokens_per_micro=64, pack_sequences=False).packed
    with pytest.raises(AttributeError):
        spec.pad_id = 1                                # frozen: built once per run
