"""OBS group choice: redundancy beats magnitude, quotas per kv group hold, and the cost matches a direct refit."""

import torch

from finescope_core.layerwise import damped, refit_columns
from finescope_core.obs import obs_removal


def inputs_with_a_redundant_column(n_tokens: int = 400) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(n_tokens, 6, dtype=torch.float64) * torch.linspace(0.5, 3, 6, dtype=torch.float64)
    return torch.cat([x, x[:, 4:].sum(1, keepdim=True)], dim=1)  # column 6 = column 4 + column 5


def test_a_column_the_others_reproduce_goes_first_however_large():
    x = inputs_with_a_redundant_column()
    weight = torch.randn(5, 7, dtype=torch.float64)
    weight[:, 6] *= 50  # by far the largest contribution to the output
    assert obs_removal(weight, x.T @ x, block=1, groups=1, per_group=1)[0] in (4, 5, 6)  # each is the other two
    energy = weight.pow(2).sum(0) * (x.T @ x).diagonal()
    assert energy.argmin() not in (4, 5, 6)  # an energy score would drop an irreplaceable column instead


def test_blocks_respect_the_quota_of_every_group():
    torch.manual_seed(1)
    x = torch.randn(300, 12, dtype=torch.float64)
    weight = torch.randn(4, 12, dtype=torch.float64)
    removed = obs_removal(weight, x.T @ x, block=2, groups=2, per_group=1)  # 6 blocks, 3 per group
    assert len(removed) == 2 and sorted(b // 3 for b in removed) == [0, 1]


def test_greedy_choice_is_no_worse_than_any_single_alternative():
    x = inputs_with_a_redundant_column()[:, :6]
    weight = torch.randn(3, 6, dtype=torch.float64)
    gram = x.T @ x
    chosen = obs_removal(weight, gram, block=1, groups=1, per_group=1)[0]

    def refit_error(drop: int) -> float:  # the objective OBS minimises: output error in the damped Gram's norm
        kept = [c for c in range(6) if c != drop]
        residual = weight.clone()
        residual[:, kept] -= refit_columns(weight, gram, kept)
        return float(torch.trace(residual @ damped(gram) @ residual.T))

    assert refit_error(chosen) <= min(refit_error(c) for c in range(6)) + 1e-6
