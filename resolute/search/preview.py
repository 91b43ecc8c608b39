"""``resolute preview-search``: what a search will do, before it runs.

``preview(settings, space)`` returns JSON-able data: the plan (ASHA brackets and budget,
PBT generations, grid size, trial count) and a simulated run of the real searcher over
synthetic learning curves (a deterministic quality per hyperparameter point, decaying
with time), showing how many trials train how long. ``format_preview`` renders it as text.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from typing import Any

from resolute.errors import SearcherError
from resolute.search.asha_plan import asha_plan
from resolute.search.base import Searcher
from resolute.search.pbt import pbt_plan
from resolute.search.settings import SearcherSettings, make_searcher
from resolute.search.simulate import simulate
from resolute.search.space import HParams, Space, flatten, grid_points

_MAX_SIMULATED_TRIALS = 10_000
_UNLIMITED_SLOTS = 1 << 20


def _quality(hparams: HParams) -> float:
    # A stable pseudo-random quality per point: Python's hash() is salted per process.
    text = json.dumps(flatten(hparams), sort_keys=True, default=str)
    return zlib.crc32(text.encode()) / 2**32


def _planned_trials(settings: SearcherSettings, space: Space, out: dict[str, Any]) -> int:
    s = settings
    if s.name == "single":
        return 1
    if s.name == "grid":
        points = len(grid_points(space))
        out["grid_points"] = points
        return points if s.max_trials is None else min(points, s.max_trials)
    if s.name == "asha":
        plan = asha_plan(
            max_time=s.max_time,
            max_trials=int(s.max_trials or 0),
            divisor=s.divisor,
            max_rungs=s.max_rungs,
            mode=s.mode,
            max_concurrent_trials=s.max_concurrent_trials,
        )
        out["asha"] = plan.to_json()
        return plan.max_trials
    if s.name == "pbt":
        pbt = pbt_plan(
            max_time=s.max_time,
            perturb_every=float(s.perturb_every or 0),
            population_size=int(s.population_size or 0),
            truncate_fraction=s.truncate_fraction,
            max_trials=s.max_trials,
        )
        out["pbt"] = pbt.to_json()
        return pbt.trials
    return int(s.max_trials or 0)


def _simulate(searcher: Searcher, settings: SearcherSettings, seed: int) -> dict[str, Any]:
    sign = 1.0 if settings.smaller_is_better else -1.0

    def curve(hparams: HParams, time: float) -> float:
        return sign * (_quality(hparams) + 1.0 / (1.0 + time))

    result = simulate(
        searcher,
        metric=settings.metric,
        curve=curve,
        slots=settings.max_concurrent_trials or _UNLIMITED_SLOTS,
        smaller_is_better=settings.smaller_is_better,
        time_metric=settings.time_metric,
        max_trials=settings.max_trials,
        max_concurrent_trials=settings.max_concurrent_trials,
        # Reports only at targets: the searcher decides nothing in between.
        report_every=settings.max_time,
    )
    trained = Counter(t.time - t.start_time for t in result.trials.values())
    return {
        "seed": seed,
        "trials": len(result.trials),
        "units_trained": result.units_trained,
        "max_active": result.max_active,
        "trials_by_units": [{"units": u, "trials": n} for u, n in sorted(trained.items())],
    }


def preview(settings: SearcherSettings, space: Space, *, seed: int = 0) -> dict[str, Any]:
    """Plan and simulated run of the search ``settings`` describes (JSON-able).

    Raises ValueError, naming the setting to change, for settings no searcher accepts.
    """
    s = settings
    out: dict[str, Any] = {
        "searcher": s.name,
        "metric": s.metric,
        "smaller_is_better": s.smaller_is_better,
        "time_unit": s.time_metric or "steps",
        "max_time": s.max_time,
        "max_trials": s.max_trials,
        "max_concurrent_trials": s.max_concurrent_trials,
    }
    if s.name == "asha":
        out["promotion"] = s.promotion
        out["mode"] = s.mode
    searcher = make_searcher(s, space, seed)  # validates every setting first
    trials = _planned_trials(s, space, out)
    out["trials"] = trials
    out["full_budget"] = trials * s.max_time if s.name != "pbt" else out["pbt"]["budget"]
    if trials <= _MAX_SIMULATED_TRIALS:
        try:
            out["simulation"] = _simulate(searcher, s, seed)
        except SearcherError as exc:
            out["simulation_error"] = str(exc)
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def format_preview(data: dict[str, Any]) -> str:
    """The text the CLI prints for ``preview(...)``'s data."""
    unit = data["time_unit"]
    name = data["searcher"]
    if name == "asha":
        name += f" (promotion: {data['promotion']}, mode: {data['mode']})"
    order = "smaller" if data["smaller_is_better"] else "larger"
    lines = [
        f"Searcher: {name}; metric {data['metric']} ({order} is better)",
        f"max_time: {_num(data['max_time'])} {unit}; trials: {data['trials']}; "
        f"max_concurrent_trials: {data['max_concurrent_trials'] or 'unlimited'}",
    ]
    if "grid_points" in data:
        lines.append(f"Grid points: {data['grid_points']}")
    if "asha" in data:
        plan = data["asha"]
        lines += [
            "",
            f"Brackets ({plan['effective_rungs']} rungs at most, divisor {_num(plan['divisor'])}):",
        ]
        rows = [
            [
                str(i + 1),
                str(b["rungs"]),
                ", ".join(_num(e) for e in b["rung_ends"]),
                str(b["trials"]),
                str(b["concurrency"]),
                ", ".join(str(n) for n in b["rung_trials"]),
                _num(b["budget"]),
            ]
            for i, b in enumerate(plan["brackets"])
        ]
        header = [
            "Bracket",
            "Rungs",
            f"Rung ends ({unit})",
            "Trials",
            "Concurrency",
            "Trials per rung",
            f"Budget ({unit})",
        ]
        lines += _table(header, rows)
        lines.append(
            f"Expected budget {_num(plan['budget'])} {unit} vs {_num(plan['full_budget'])} "
            f"to train every trial to max_time ({plan['ratio']:.1%})"
        )
    if "pbt" in data:
        plan = data["pbt"]
        lines += ["", f"Generations (population {plan['population']}):"]
        rows = [
            [str(g + 1), _num(end), str(clones)]
            for g, (end, clones) in enumerate(
                zip(plan["generation_ends"], plan["clones_per_generation"], strict=True)
            )
        ]
        lines += _table(["Generation", f"Ends at ({unit})", "Clones after"], rows)
        lines.append(f"Trials created: {plan['trials']}; budget {_num(plan['budget'])} {unit}")
    sim = data.get("simulation")
    if sim is not None:
        lines += [
            "",
            f"Simulated run (synthetic curves, seed {sim['seed']}): {sim['trials']} trials, "
            f"{_num(sim['units_trained'])} {unit} trained "
            f"({sim['units_trained'] / max(data['full_budget'], 1e-12):.1%} of "
            f"{_num(data['full_budget'])})",
        ]
        rows = [[_num(r["units"]), str(r["trials"])] for r in sim["trials_by_units"]]
        lines += ["  " + line for line in _table([f"Trained ({unit})", "Trials"], rows)]
    if "simulation_error" in data:
        lines += ["", f"Simulation failed: {data['simulation_error']}"]
    return "\n".join(lines)
