"""selection: d3s as the trainer drives it: scheduled ratios, the kept masks, metrics, and clear errors."""

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.plugins import load_builtins
from rlkit.registry import SELECTIONS

load_builtins()


def _batch() -> RolloutBatch:
    # 8 completions in 2 groups of 4, lengths 4,4,2,3 | 4,1,4,2; outcome advantages
    lengths = torch.tensor([4, 4, 2, 3, 4, 1, 4, 2])
    mask = torch.arange(4)[None, :] < lengths[:, None]                                   # [8, 4]
    adv = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.8, 0.8, -0.8, -0.8])
    b = RolloutBatch(prompt_ids=[[1]] * 8, response_ids=torch.ones(8, 4, dtype=torch.long), response_mask=mask,
                     rollout_logprobs=torch.zeros(8, 4), truncated=torch.zeros(8, dtype=torch.bool),
                     group_ids=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), rewards=adv.clone(), success=adv.clone(),
                     reward_components=adv[:, None])
    b.advantages = adv[:, None] * mask
    b.entropy = torch.arange(32, dtype=torch.float32).reshape(8, 4) / 32 * mask            # later tokens: higher H
    return b


def test_start_of_run_keeps_half_the_samples_and_a_fifth_of_their_tokens():
    samples_only, _ = SELECTIONS.build("d3s", {"sample_ratio": [0.5, 1.0], "token_ratio": 1.0})(_batch(), 0.0)
    # cross, 4 of 8: candidates top-j + bottom-(4-j) of the stable descending order; variances x4 (sum of squared
    # deviations): j=1 3.69, j=2 4.0475 (1.5, 0.8 of row 4, -0.8, -0.8), j=3 2.847 -> rows 0, 4, 6, 7
    assert samples_only.sum(-1).gt(0).tolist() == [True, False, False, False, True, False, True, True]
    sel = SELECTIONS.build("d3s", {"sample_ratio": [0.5, 1.0], "token_ratio": [0.2, 1.0]})
    assert sel.requires == {"entropy"}
    w, m = sel(_batch(), progress=0.0)
    assert m["sample_frac"] == 0.5 and m["var_after"] > m["var_before"]
    # ceil(0.2 x 14 kept tokens) = 3, by |A| x H: row 7 (0.8 x 29/32, 0.8 x 28/32), then row 6 (0.8 x 27/32)
    assert torch.nonzero(w).tolist() == [[6, 3], [7, 0], [7, 1]]
    assert m["token_frac"] == pytest.approx(3 / 24) and m["token_frac"] <= 0.5


def test_end_of_run_keeps_everything_and_cosine_is_in_between():
    b = _batch()
    w, m = SELECTIONS.build("d3s", {})(b, progress=1.0)
    assert torch.equal(w, b.response_mask.float()) and m["token_frac"] == 1.0
    _, lin = SELECTIONS.build("d3s", {})(b, progress=0.25)
    _, cos = SELECTIONS.build("d3s", {"schedule": "cosine"})(b, progress=0.25)
    assert lin["sample_ratio"] == pytest.approx(0.625) and cos["sample_ratio"] == pytest.approx(0.5 + 0.5 * 0.14644660940672624)


def test_intra_keeps_per_group_and_options_are_checked():
    w, m = SELECTIONS.build("d3s", {"mode": "intra", "sample_ratio": 0.5, "token_ratio": 1.0})(_batch(), 0.0)
    rows = w.sum(-1).gt(0)
    assert rows[:4].sum() == 2 and rows[4:].sum() == 2 and m["sample_frac"] == 0.5
    with pytest.raises(Exception, match="token_ratio"):
        SELECTIONS.build("d3s", {"token_ratio": [0.0, 1.0]})
    with pytest.raises(Exception, match="mode"):
        SELECTIONS.build("d3s", {"mode": "global"})
    b = _batch()
    b.entropy = None
    with pytest.raises(ValueError, match="entropy"):
        SELECTIONS.build("d3s", {})(b, 0.0)
