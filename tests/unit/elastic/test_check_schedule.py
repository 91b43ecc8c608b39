"""CheckSchedule: which calls of commit()/should_stop() agree through a collective."""

from __future__ import annotations

from resolute.elastic.control import MAX_CHECK_GAP_CALLS, MAX_CHECK_GAP_S, CheckSchedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_calls(
    schedule: CheckSchedule,
    clock: FakeClock,
    *,
    n: int,
    step_s: float,
    check_s: float,
    generation: int = 0,
) -> list[int]:
    """Drive ``n`` calls as rank 0 would; returns the indices of the calls that checked."""
    checked = []
    for i in range(n):
        clock.now += step_s
        if schedule.due(generation):
            checked.append(i)
            gap = schedule.propose_gap()
            clock.now += check_s
            schedule.agreed(gap)
    return checked


def test_the_first_call_checks_and_so_does_the_next_until_there_is_timing() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    assert schedule.due(0) is True
    assert schedule.propose_gap() == 0
    schedule.agreed(0)
    assert schedule.due(0) is True


def test_cheap_checks_on_fast_steps_are_spaced_to_at_most_the_gap_limit() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    # 1 ms steps, 1 ms checks: a check may cost 0.5% of 200 ms, but the limit is 100 ms.
    checked = run_calls(schedule, clock, n=1000, step_s=0.001, check_s=0.001)
    gaps = [b - a for a, b in zip(checked[2:], checked[3:], strict=False)]
    assert gaps and all(g == round(MAX_CHECK_GAP_S / 0.001) for g in gaps[1:]), gaps
    assert len(checked) < 20


def test_checks_are_spaced_so_that_they_cost_half_a_percent() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    # 10 ms steps, 0.1 ms checks: every 20 ms of training is 0.5%, so every second call.
    checked = run_calls(schedule, clock, n=200, step_s=0.010, check_s=0.0001)
    later = [b - a for a, b in zip(checked[5:], checked[6:], strict=False)]
    assert set(later) == {2}, later


def test_slow_steps_check_every_call() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    checked = run_calls(schedule, clock, n=50, step_s=0.5, check_s=0.001)
    assert checked == list(range(50))


def test_a_rank_that_adopts_the_leaders_gaps_checks_at_the_same_calls() -> None:
    leader_clock, follower_clock = FakeClock(), FakeClock()
    leader = CheckSchedule(clock=leader_clock)
    follower = CheckSchedule(clock=follower_clock)
    leader_checks, follower_checks = [], []
    for i in range(500):
        leader_clock.now += 0.002
        follower_clock.now += 0.013  # a different clock must not matter
        a, b = leader.due(3), follower.due(3)
        assert a == b
        if a:
            gap = leader.propose_gap()
            leader_clock.now += 0.001
            leader.agreed(gap)
            follower.agreed(gap)
            leader_checks.append(i)
            follower_checks.append(i)
    assert leader_checks == follower_checks
    assert len(leader_checks) < 100


def test_a_new_generation_checks_at_its_first_call() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    run_calls(schedule, clock, n=100, step_s=0.001, check_s=0.001)
    assert schedule.due(0) is False  # within a long gap
    assert schedule.due(1) is True


def test_force_makes_the_next_call_a_check() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    run_calls(schedule, clock, n=100, step_s=0.001, check_s=0.001)
    schedule.force()
    assert schedule.due(0) is True


def test_the_gap_never_exceeds_its_cap() -> None:
    clock = FakeClock()
    schedule = CheckSchedule(clock=clock)
    assert schedule.due(0)
    schedule.agreed(0)
    assert schedule.due(0)  # zero time per call: the cap applies
    assert schedule.propose_gap() == MAX_CHECK_GAP_CALLS


def test_targets_travel_as_ints_rounded_down() -> None:
    from resolute.elastic.reporter import _target_as_int

    assert _target_as_int(3.0) == 3
    assert _target_as_int(3.7) == 3  # rounded down: a check forced too often, never too rarely
    assert _target_as_int(float("inf")) == 2**62
    assert _target_as_int(float("nan")) == 2**62
    assert _target_as_int(float("-inf")) == -(2**62)
