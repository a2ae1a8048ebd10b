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


T_PLANS = 50
ALL_PLANS = [
    ddpm_plan(T_PLANS), ddpm_plan(T_PLANS, start_t=7), ddim_plan(T_PLANS, 1), ddim_plan(T_PLANS, 10, eta=0.3),
    ddim_plan(T_PLANS, 100), ddim_plan(T_PLANS, 4, start_t=20), repaint_plan(T_PLANS, 10, 2),
    repaint_plan(T_PLANS, 3, 4, start_t=11), repaint_plan(T_PLANS, 1, 3, start_t=0),
    make_plan("ddim", T_PLANS, num_steps=5, start_t=0),
]


@pytest.mark.parametrize("plan", ALL_PLANS, ids=lambda p: p.name)
def test_every_plan_visits_valid_timesteps(plan):
    ts = plan.timesteps
    plan.check_range(T_PLANS)
    assert ts[-1] == -1 and -1 not in ts[:-1] and ts[-2] == 0
    assert all(0 <= t < T_PLANS for t in ts[:-1])
    assert all(a != b for a, b in zip(ts[:-1], ts[1:]))
    moves = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if plan.name.startswith("repaint"):
        assert set(moves) <= {-1, 1}  # up-moves re-noise one step at a time, q(x_t | x_{t-1})
    else:
        assert all(m < 0 for m in moves)
    if plan.name.startswith("ddpm"):
        assert set(moves) == {-1}
    assert plan.network_evaluations == sum(m < 0 for m in moves)


def test_partial_plans_start_at_start_t_and_name_it():
    assert ddpm_plan(T_PLANS, start_t=7).start_t == 7 and ddpm_plan(T_PLANS, start_t=7).name == "ddpm_from7"
    assert ddim_plan(T_PLANS, 4, start_t=20).timesteps == (20, 13, 7, 0, -1)
    assert ddpm_plan(T_PLANS).name == "ddpm" and ddpm_plan(T_PLANS).start_t == T_PLANS - 1
    p = repaint_plan(T_PLANS, 3, 4, start_t=11)
    assert max(p.timesteps) == 11 and p.start_t == 11


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "repaint"])
def test_start_t_minus_one_is_the_empty_plan(kind):
    p = make_plan(kind, T_PLANS, start_t=-1)
    assert p.timesteps == (-1,) and p.network_evaluations == 0 and p.start_t == -1


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "repaint"])
@pytest.mark.parametrize("start_t", [-2, T_PLANS, 1000])
def test_start_t_out_of_range_is_rejected(kind, start_t):
    with pytest.raises(ValueError, match=r"start_t must lie in -1\.\.49"):
        make_plan(kind, T_PLANS, start_t=start_t)


def test_a_plan_visits_the_clean_sample_only_at_the_end():
    with pytest.raises(ValueError, match="end at -1"):
        TimestepPlan((2, -1, 1, 0, -1))
    with pytest.raises(ValueError, match="outside"):
        TimestepPlan((60, -1)).check_range(T_PLANS)
