"""The allocation policy on tables of scenarios (pure: no Ray)."""

from __future__ import annotations

import pytest

from resolute.runtime.policy import (
    Change,
    ExperimentSpec,
    NodeSpec,
    TrialDemand,
    allocate,
    fits_ever,
)

CPU = {"CPU": 1.0}
GPU = {"CPU": 1.0, "GPU": 1.0}


def nodes(*sizes: int, gpu: bool = False) -> list[NodeSpec]:
    out = []
    for i, n in enumerate(sizes):
        res = {"CPU": float(n) * 2, "GPU": float(n)} if gpu else {"CPU": float(n)}
        out.append(NodeSpec(f"n{i}", res))
    return out


def trial(tid, exp, lo=1, hi=None, placement=None, order=0, slot=CPU, last_resize=None, grew=False):
    return TrialDemand(
        trial_id=tid,
        experiment_id=exp,
        slot=slot,
        min_slots=lo,
        max_slots=hi if hi is not None else lo,
        placement=placement or {},
        order=order if order else tid,
        last_resize=last_resize,
        last_grew=grew,
    )


def sizes(result):
    return {tid: a.size for tid, a in result.items()}


@pytest.mark.parametrize(
    ("cluster", "demands", "expected"),
    [
        # one node of 4, two fixed 2-slot trials: both start
        (nodes(4), [trial(1, 1, 2), trial(2, 1, 2)], {1: 2, 2: 2}),
        # three 2-slot trials on 4 slots: the oldest two start, the third waits
        (nodes(4), [trial(1, 1, 2), trial(2, 1, 2), trial(3, 1, 2)], {1: 2, 2: 2, 3: 0}),
        # an elastic trial takes all idle slots up to its max
        (nodes(4, 4), [trial(1, 1, 2, 6)], {1: 6}),
        # two elastic trials share leftovers evenly (same experiment, same weight)
        (nodes(8), [trial(1, 1, 1, 8), trial(2, 1, 1, 8)], {1: 4, 2: 4}),
        # a trial whose min does not fit anywhere waits; the smaller one still starts
        (nodes(2, 2), [trial(1, 1, 5), trial(2, 1, 1)], {1: 0, 2: 1}),
        # ranks span nodes when no single node holds them
        (nodes(2, 2), [trial(1, 1, 3)], {1: 3}),
    ],
)
def test_basic_tables(cluster, demands, expected):
    exps = [ExperimentSpec(experiment_id=1)]
    assert sizes(allocate(nodes=cluster, experiments=exps, trials=demands)) == expected


def test_priority_takes_lent_slots_before_preempting():
    # low-priority elastic trial runs at 4 of {1, 4}; a high-priority 3-slot trial arrives
    exps = [ExperimentSpec(1, priority=50), ExperimentSpec(2, priority=10)]
    low = trial(1, 1, 1, 4, placement={"n0": 4})
    high = trial(2, 2, 3)
    result = allocate(nodes=nodes(4), experiments=exps, trials=[low, high])
    assert result[2].size == 3 and result[2].change == Change.START
    assert result[1].size == 1 and result[1].change == Change.SHRINK  # shrunk, not preempted


def test_priority_preempts_when_shrinking_is_not_enough():
    exps = [ExperimentSpec(1, priority=50), ExperimentSpec(2, priority=10)]
    low_a = trial(1, 1, 2, placement={"n0": 2})
    low_b = trial(2, 1, 2, placement={"n0": 2})
    high = trial(3, 2, 2)
    result = allocate(nodes=nodes(4), experiments=exps, trials=[low_a, low_b, high])
    assert result[3].change == Change.START
    changes = sorted([result[1].change, result[2].change])
    assert changes == sorted([Change.KEEP, Change.PREEMPT])
    # the older low trial keeps running: ties between equals go to the oldest
    assert result[1].change == Change.KEEP


def test_lower_number_is_higher_priority_even_when_queued_later():
    exps = [ExperimentSpec(1, priority=42), ExperimentSpec(2, priority=1)]
    a = trial(1, 1, 2, order=1)
    b = trial(2, 2, 2, order=2)
    result = allocate(nodes=nodes(2), experiments=exps, trials=[a, b])
    assert sizes(result) == {1: 0, 2: 2}


def test_weighted_fair_share_one_to_two():
    exps = [ExperimentSpec(1, weight=1.0), ExperimentSpec(2, weight=2.0)]
    demands = [trial(i, 1, order=i) for i in range(1, 7)]
    demands += [trial(10 + i, 2, order=10 + i) for i in range(1, 7)]
    result = allocate(nodes=nodes(6), experiments=exps, trials=demands)
    per_exp = {1: 0, 2: 0}
    for t in demands:
        per_exp[t.experiment_id] += result[t.trial_id].size
    assert per_exp == {1: 2, 2: 4}


def test_under_share_experiment_preempts_over_share_running_trials():
    exps = [ExperimentSpec(1), ExperimentSpec(2)]
    running = [trial(i, 1, placement={"n0": 1}, order=i) for i in range(1, 5)]
    queued = [trial(10 + i, 2, order=10 + i) for i in range(1, 5)]
    result = allocate(nodes=nodes(4), experiments=exps, trials=running + queued)
    assert sum(result[t.trial_id].size for t in running) == 2
    assert sum(result[t.trial_id].size for t in queued) == 2
    # the newest running trials are the ones preempted
    assert result[1].change == result[2].change == Change.KEEP
    assert result[3].change == result[4].change == Change.PREEMPT


def test_max_slots_caps_an_experiment():
    exps = [ExperimentSpec(1, max_slots=3)]
    result = allocate(nodes=nodes(8), experiments=exps, trials=[trial(1, 1, 1, 8), trial(2, 1, 1)])
    assert result[1].size + result[2].size == 3
    assert result[2].size == 1


def test_packing_prefers_one_node_and_idle_capacity():
    # n0 has 2 free, n1 has 4 of which 2 are used by a running trial: a 2-rank trial goes to
    # n0 entirely (idle, exact fit) rather than splitting or crowding n1
    cluster = [NodeSpec("n0", {"CPU": 2.0}), NodeSpec("n1", {"CPU": 4.0})]
    running = trial(1, 1, 2, placement={"n1": 2})
    new = trial(2, 1, 2)
    result = allocate(nodes=cluster, experiments=[ExperimentSpec(1)], trials=[running, new])
    assert result[2].placement == {"n0": 2}
    assert result[1].placement == {"n1": 2}


def test_running_trial_keeps_its_nodes_when_growing():
    cluster = nodes(2, 2, 2)
    running = trial(1, 1, 1, 4, placement={"n1": 2})
    result = allocate(nodes=cluster, experiments=[ExperimentSpec(1)], trials=[running])
    assert result[1].size == 4
    assert result[1].placement["n1"] == 2


def test_lost_node_shrinks_the_trial_on_it():
    # the trial ran on n0 and n1; n1 is gone: it shrinks to what fits, not preempted
    running = trial(1, 1, 1, 4, placement={"n0": 2, "n1": 2})
    result = allocate(nodes=nodes(2), experiments=[ExperimentSpec(1)], trials=[running])
    assert result[1].size == 2 and result[1].change == Change.SHRINK
    assert result[1].placement == {"n0": 2}


def test_cooldown_holds_size_then_releases():
    running = trial(1, 1, 1, 4, placement={"n0": 2}, last_resize=100.0)
    exps = [ExperimentSpec(1)]
    held = allocate(nodes=nodes(4), experiments=exps, trials=[running], now=105.0, cooldown_s=30)
    assert held[1].change == Change.KEEP and held[1].size == 2
    later = allocate(nodes=nodes(4), experiments=exps, trials=[running], now=140.0, cooldown_s=30)
    assert later[1].change == Change.GROW and later[1].size == 4


def test_cooldown_lets_a_trial_that_just_grew_grow_again():
    # A search's tail frees slots one by one: each goes to the running trial at once.
    grown = trial(1, 1, 1, 4, placement={"n0": 2}, last_resize=100.0, grew=True)
    exps = [ExperimentSpec(1)]
    result = allocate(nodes=nodes(4), experiments=exps, trials=[grown], now=101.0, cooldown_s=30)
    assert result[1].change == Change.GROW and result[1].size == 4


def test_cooldown_does_not_block_a_higher_priority_minimum():
    exps = [ExperimentSpec(1, priority=50), ExperimentSpec(2, priority=1)]
    low = trial(1, 1, 1, 4, placement={"n0": 4}, last_resize=100.0)
    high = trial(2, 2, 2)
    result = allocate(
        nodes=nodes(4), experiments=exps, trials=[low, high], now=101.0, cooldown_s=60
    )
    assert result[2].size == 2
    assert result[1].size == 2 and result[1].change == Change.SHRINK


def test_cooldown_gives_lent_slots_back_to_a_queued_trial_of_its_own_experiment():
    # The tail of a search lent a trial every slot; the search then creates a trial (or a
    # paused one resumes): its minimum takes a lent slot back at once, cool-down or not.
    exps = [ExperimentSpec(1)]
    lender = trial(1, 1, 1, 4, placement={"n0": 4}, last_resize=100.0)
    queued = trial(2, 1, 1, 1)
    result = allocate(
        nodes=nodes(4), experiments=exps, trials=[lender, queued], now=101.0, cooldown_s=60
    )
    assert result[2].change == Change.START and result[2].size == 1
    assert result[1].change == Change.SHRINK and result[1].size == 3


def test_cooldown_keeps_lent_slots_against_another_lenders_share():
    # Without the cool-down fair share would even them out at 2 and 2.
    exps = [ExperimentSpec(1)]
    cooling = trial(1, 1, 1, 4, placement={"n0": 3}, last_resize=100.0)
    other = trial(2, 1, 1, 4, placement={"n0": 1}, last_resize=0.0)
    held = allocate(
        nodes=nodes(4), experiments=exps, trials=[cooling, other], now=101.0, cooldown_s=60
    )
    assert (held[1].size, held[1].change) == (3, Change.KEEP)
    assert (held[2].size, held[2].change) == (1, Change.KEEP)
    later = allocate(
        nodes=nodes(4), experiments=exps, trials=[cooling, other], now=200.0, cooldown_s=60
    )
    assert (later[1].size, later[2].size) == (2, 2)


def test_gpu_slots_need_gpus():
    cluster = nodes(2, 1, gpu=True)  # n0: 2 GPUs, n1: 1 GPU
    result = allocate(
        nodes=cluster,
        experiments=[ExperimentSpec(1)],
        trials=[trial(1, 1, 2, slot=GPU), trial(2, 1, 2, slot=GPU)],
    )
    assert result[1].placement == {"n0": 2}
    assert result[2].size == 0  # only one GPU left


@pytest.mark.parametrize(
    ("cluster", "demand", "ok"),
    [
        (nodes(4), trial(1, 1, 4), True),
        (nodes(2, 2), trial(1, 1, 4), True),
        (nodes(2, 2), trial(1, 1, 5), False),
        (nodes(1, gpu=True), trial(1, 1, 2, slot=GPU), False),
    ],
)
def test_fits_ever(cluster, demand, ok):
    assert fits_ever(demand, cluster) is ok


def test_allocation_never_oversubscribes_any_node():
    cluster = nodes(3, 5, 2)
    exps = [ExperimentSpec(1, priority=10), ExperimentSpec(2, weight=2), ExperimentSpec(3)]
    demands = [trial(i, 1 + i % 3, 1 + i % 2, 4, order=i) for i in range(12)]
    result = allocate(nodes=cluster, experiments=exps, trials=demands)
    load: dict[str, int] = {}
    for a in result.values():
        for node, k in a.placement.items():
            load[node] = load.get(node, 0) + k
        assert (
            a.size == 0 or a.size >= [d for d in demands if d.trial_id == a.trial_id][0].min_slots
        )
    assert load["n0"] <= 3 and load["n1"] <= 5 and load["n2"] <= 2
    assert sum(load.values()) == 10  # and nothing idle while someone could grow


def test_reserved_slots_count_toward_fair_share():
    # B (weight 2) already holds 2 slots that are still starting (reserved; their capacity
    # is off the nodes). Of 2 free slots A gets the first (share 0 < B's 2/2), then A and B
    # tie at 1 and the older trial, A's, gets the second: 2 : 2+0 over 4 slots.
    exps = [ExperimentSpec(1, weight=1.0), ExperimentSpec(2, weight=2.0, reserved=2)]
    demands = [trial(i, 1, order=i) for i in range(1, 4)]
    demands += [trial(10 + i, 2, order=10 + i) for i in range(1, 4)]
    result = allocate(nodes=nodes(2), experiments=exps, trials=demands)
    per_exp = {1: 0, 2: 0}
    for t in demands:
        per_exp[t.experiment_id] += result[t.trial_id].size
    assert per_exp == {1: 2, 2: 0}
    # without the reservation the 2 free slots split 1 : 1
    exps_free = [ExperimentSpec(1, weight=1.0), ExperimentSpec(2, weight=2.0)]
    result = allocate(nodes=nodes(2), experiments=exps_free, trials=demands)
    assert sum(result[t.trial_id].size for t in demands if t.experiment_id == 2) == 1


def test_reserved_slots_count_toward_max_slots():
    exps = [ExperimentSpec(1, max_slots=2, reserved=2)]
    result = allocate(nodes=nodes(4), experiments=exps, trials=[trial(1, 1)])
    assert result[1].size == 0
