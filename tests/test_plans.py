import pytest

from diffatlas.sampling.plans import TimestepPlan, ddim_plan, ddpm_plan, make_plan, repaint_plan


def test_ddpm_visits_every_step():
    p = ddpm_plan(10)
    assert p.timesteps == tuple(range(9, -2, -1)) and p.network_evaluations == 10
    assert ddpm_plan(10, start_t=3).timesteps == (3, 2, 1, 0, -1)


def test_ddim_is_strided_and_ends_at_zero():
    p = ddim_plan(300, 10)
    assert p.timesteps[0] == 299 and p.timesteps[-2:] == (0, -1)
    assert len(p.timesteps) == 11 and list(p.timesteps) == sorted(p.timesteps, reverse=True)


@pytest.mark.parametrize("jump_length, jump_n", [(10, 2), (5, 3), (1, 2)])
def test_repaint_moves_one_step_at_a_time_and_stays_in_range(jump_length, jump_n):
    T = 50
    p = repaint_plan(T, jump_length, jump_n)
    steps = [b - a for a, b in zip(p.timesteps[:-1], p.timesteps[1:])]
    assert set(steps) <= {-1, 1}
    assert max(p.timesteps) == T - 1 and p.timesteps[-1] == -1
    assert p.network_evaluations == T + (jump_n - 1) * jump_length * len(range(0, T - jump_length, jump_length))


def test_plan_validation():
    with pytest.raises(ValueError, match="end at -1"):
        TimestepPlan((3, 2, 1))
    with pytest.raises(ValueError, match="unknown plan"):
        make_plan("euler", 10)
    with pytest.raises(ValueError, match="start_t"):
        ddpm_plan(10, start_t=10)
