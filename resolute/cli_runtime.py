"""CLI verbs that run or inspect experiments: ``experiment create|list|describe|kill`` and
``trial describe``. Heavy imports (Ray, MLflow) stay inside the commands."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click


def _journal() -> Any:
    from resolute.runtime.journal import Journal
    from resolute.runtime.scheduler import default_journal_url

    return Journal(default_journal_url())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _print_summary(summary: dict[str, Any], config: Any) -> None:
    from resolute.runtime.storage import default_tracking_uri

    click.echo(
        f"experiment {summary['id']} ({summary['name']}) {summary['status']} "
        f"in {summary['elapsed']:.1f}s: {summary['trials']} trials"
    )
    if summary.get("error"):
        click.echo(f"error: {summary['error']}")
    if summary.get("best_trial") is not None:
        click.echo(
            f"best trial {summary['best_trial']}: {summary['metric']} = "
            f"{summary['best_metric']:.6g}"
        )
        click.echo(f"  hparams: {json.dumps(summary['best_hparams'], sort_keys=True)}")
        click.echo(f"  checkpoint: {summary.get('best_checkpoint') or '-'}")
    uri = config.tracking.mlflow_uri or default_tracking_uri(config.storage)
    click.echo(f"MLflow: mlflow ui --backend-store-uri {uri}")
    click.echo(f"details: resolute experiment describe {summary['id']}")


def register(experiment: click.Group, trial: click.Group) -> None:
    """Attach the runtime verbs to the CLI's ``experiment`` and ``trial`` groups."""

    @experiment.command("create")
    @click.argument("config_path", type=click.Path(dir_okay=False))
    @click.option("--follow/--detach", default=True, help="Stream progress until it ends.")
    @click.option(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).",
    )
    def create(config_path: str, follow: bool, address: str | None) -> None:
        """Submit the experiment in CONFIG_PATH and (by default) follow it to the end."""
        from resolute.config import load_config
        from resolute.errors import ConfigError, ResoluteError

        try:
            config = load_config(config_path)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
        from resolute.runtime import client

        try:
            conn = client.connect(address)
        except ResoluteError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        if conn.embedded and not follow:
            click.echo(
                "--detach needs a cluster: with no --address/RAY_ADDRESS the experiment runs "
                "in an embedded Ray that ends with this command. Start a cluster "
                "(`ray start --head`) and pass --address, or drop --detach.",
                err=True,
            )
            client.close(conn)
            sys.exit(2)
        try:
            try:
                exp_id = client.submit(conn, config)
            except ResoluteError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
            click.echo(f"experiment {exp_id} submitted ({config.name}, {config.searcher.name})")
            if not follow:
                click.echo(f"follow it with: resolute experiment describe {exp_id}")
                return
            try:
                summary = client.follow(conn, exp_id)
            except KeyboardInterrupt:
                click.echo("\ninterrupted: stopping the experiment's trials ...", err=True)
                summary = client.kill(conn, exp_id)
                _print_summary(summary, config)
                sys.exit(130)
            _print_summary(summary, config)
            if summary["status"] != "COMPLETED":
                sys.exit(1)
        finally:
            client.close(conn)

    def _control(address: str | None, method: str, *args: Any) -> dict[str, Any]:
        from resolute.errors import ResoluteError
        from resolute.runtime import client

        try:
            conn = client.attach(address)
            return dict(client.call(conn, method, *args))
        except ResoluteError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    address_option = click.option(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS)."
    )

    def _report(summary: dict[str, Any]) -> None:
        from resolute.runtime.client import format_progress

        click.echo(
            f"experiment {summary['id']} ({summary['name']}): {summary['status']}, priority "
            f"{summary['priority']}, max_slots {_fmt(summary['max_slots'])}, "
            f"{summary['used_slots']} slot(s) in use"
        )
        click.echo("  " + format_progress(summary))

    @experiment.command("pause")
    @click.argument("experiment_id", type=int)
    @address_option
    def pause(experiment_id: int, address: str | None) -> None:
        """Checkpoint every running trial and free its slots."""
        _report(_control(address, "pause", experiment_id))

    @experiment.command("activate")
    @click.argument("experiment_id", type=int)
    @address_option
    def activate(experiment_id: int, address: str | None) -> None:
        """Resume a paused experiment from its trials' checkpoints, also one that an earlier
        scheduler left PAUSED or ACTIVE (stopped by `resolute cluster down`, or died). With
        no cluster (no --address, no RAY_ADDRESS) it runs in an embedded Ray and this
        command follows it to the end; Ctrl-C pauses it again."""
        if address or os.environ.get("RAY_ADDRESS"):
            _report(_control(address, "activate", experiment_id))
            return
        _activate_embedded(experiment_id)

    def _activate_embedded(experiment_id: int) -> None:
        from resolute.config import ExperimentConfig
        from resolute.errors import ResoluteError
        from resolute.runtime import client

        try:
            record = _journal().get_experiment(experiment_id)
            conn = client.connect(None)
        except ResoluteError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        try:
            try:
                _report(client.call(conn, "activate", experiment_id))
            except ResoluteError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
            try:
                summary = client.follow(conn, experiment_id)
            except KeyboardInterrupt:
                click.echo(
                    "\ninterrupted: pausing the experiment (its trials checkpoint) ...", err=True
                )
                client.pause_all(conn)
                click.echo(
                    f"paused; `resolute experiment activate {experiment_id}` resumes it", err=True
                )
                sys.exit(130)
            _print_summary(summary, ExperimentConfig.from_yaml(record.config_yaml))
            if summary["status"] != "COMPLETED":
                sys.exit(1)
        finally:
            client.close(conn)

    @experiment.command("kill")
    @click.argument("experiment_id", type=int)
    @address_option
    def kill(experiment_id: int, address: str | None) -> None:
        """Stop every trial of the experiment now."""
        _report(_control(address, "kill", experiment_id))

    @experiment.command("set-priority")
    @click.argument("experiment_id", type=int)
    @click.argument("priority", type=click.IntRange(1, 99))
    @address_option
    def set_priority(experiment_id: int, priority: int, address: str | None) -> None:
        """Change the priority (1..99, lower runs first); slots move at the next round."""
        _report(_control(address, "set_priority", experiment_id, priority))

    @experiment.command("set-max-slots")
    @click.argument("experiment_id", type=int)
    @click.argument("max_slots", type=str)
    @address_option
    def set_max_slots(experiment_id: int, max_slots: str, address: str | None) -> None:
        """Cap the slots the experiment may hold (a number, or 'none')."""
        if max_slots.lower() == "none":
            cap = None
        elif max_slots.isdigit() and int(max_slots) > 0:
            cap = int(max_slots)
        else:
            click.echo(
                f"error: MAX_SLOTS must be a positive number or 'none', got {max_slots!r}", err=True
            )
            sys.exit(2)
        _report(_control(address, "set_max_slots", experiment_id, cap))

    @experiment.command("follow")
    @click.argument("experiment_id", type=int)
    @address_option
    def follow_cmd(experiment_id: int, address: str | None) -> None:
        """Show live progress of a running experiment until it ends (Ctrl-C only detaches)."""
        from resolute.errors import ResoluteError
        from resolute.runtime import client

        try:
            conn = client.attach(address)
            client.call(conn, "status", experiment_id)
        except ResoluteError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        try:
            summary = client.follow(conn, experiment_id)
        except KeyboardInterrupt:
            click.echo("\ndetached; the experiment keeps running", err=True)
            return
        click.echo(f"experiment {experiment_id} {summary['status']}")
        if summary["status"] != "COMPLETED":
            sys.exit(1)

    @trial.command("kill")
    @click.argument("trial_id", type=int)
    @address_option
    def kill_trial(trial_id: int, address: str | None) -> None:
        """Stop one trial now; the searcher treats it as the worst result."""
        _report(_control(address, "kill_trial", trial_id))

    @experiment.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_experiments(as_json: bool) -> None:
        """Experiments in the journal, newest first."""
        rows = sorted(_journal().list_experiments(), key=lambda e: -e.id)
        if as_json:
            click.echo(json.dumps([_record(e) for e in rows], indent=2, default=str))
            return
        if not rows:
            click.echo("no experiments yet: resolute experiment create EXP.yaml")
            return
        click.echo(
            _table(
                [
                    "id",
                    "name",
                    "status",
                    "progress",
                    "priority",
                    "max slots",
                    "best trial",
                    "best metric",
                    "created",
                ],
                [
                    [
                        e.id,
                        e.name,
                        e.status.value,
                        f"{100 * (e.progress or 0):.0f}%",
                        e.priority,
                        e.max_slots,
                        e.best_trial_id,
                        e.best_metric,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created_at)),
                    ]
                    for e in rows
                ],
            )
        )

    @experiment.command("describe")
    @click.argument("experiment_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def describe_experiment(experiment_id: int, as_json: bool) -> None:
        """An experiment and its trials, best first."""
        from resolute.config import parse_config_yaml
        from resolute.errors import NotFound
        from resolute.search.base import rank_value

        journal = _journal()
        try:
            exp = journal.get_experiment(experiment_id)
        except NotFound as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        config = parse_config_yaml(exp.config_yaml, check_paths=False)
        smaller = config.searcher.smaller_is_better
        trials = sorted(
            journal.list_trials(experiment_id),
            key=lambda t: (rank_value(t.best_metric, smaller_is_better=smaller), t.id),
        )
        if as_json:
            out = _record(exp) | {"trials": [_record(t) for t in trials]}
            out.pop("config_yaml", None)
            click.echo(json.dumps(out, indent=2, default=str))
            return
        click.echo(
            f"experiment {exp.id}: {exp.name}  status {exp.status.value}  "
            f"searcher {config.searcher.name}  metric {config.searcher.metric} "
            f"({'smaller' if smaller else 'larger'} is better)  seed {exp.seed}"
        )
        click.echo(
            f"priority {exp.priority}  max slots {_fmt(exp.max_slots)}  "
            "(change with `resolute experiment set-priority` / `set-max-slots`)"
        )
        click.echo(f"storage: {exp.storage_root}")
        hp_names = sorted({k for t in trials for k in _flat(t.hparams)})
        click.echo(
            _table(
                ["trial", "status", config.searcher.metric, "at step", "last step", "restarts"]
                + hp_names,
                [
                    [t.id, t.status.value, t.best_metric, t.best_step, t.last_step, t.restarts]
                    + [_flat(t.hparams).get(k) for k in hp_names]
                    for t in trials
                ],
            )
        )

    @trial.command("describe")
    @click.argument("trial_id", type=int)
    @click.option("--log-lines", default=20, show_default=True, help="Log lines to show.")
    def describe_trial(trial_id: int, log_lines: int) -> None:
        """One trial: status, hparams, checkpoints and the tail of its log."""
        from resolute.errors import NotFound
        from resolute.runtime.storage import ExperimentStorage

        journal = _journal()
        try:
            t = journal.get_trial(trial_id)
        except NotFound as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        exp = journal.get_experiment(t.experiment_id)
        click.echo(f"trial {t.id} of experiment {t.experiment_id} ({exp.name}): {t.status.value}")
        click.echo(f"  hparams: {json.dumps(t.hparams, sort_keys=True)}")
        click.echo(f"  seed {t.seed}  restarts {t.restarts}  last step {t.last_step}")
        click.echo(f"  best metric {_fmt(t.best_metric)} at step {_fmt(t.best_step)}")
        if t.clone_from is not None:
            click.echo(f"  cloned from trial {t.clone_from}")
        if t.error:
            click.echo(f"  error: {t.error.strip().splitlines()[-1]}")
        checkpoints = journal.list_checkpoints(t.id)
        click.echo(f"  checkpoints ({len(checkpoints)}):")
        for c in checkpoints:
            click.echo(f"    step {c.step}  metric {_fmt(c.metric)}  {c.uri}")
        path = ExperimentStorage(exp.storage_root, exp.id).trial_log_path(t.id)
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-log_lines:]
            click.echo(f"  log ({path}):")
            for line in lines:
                click.echo(f"    {line}")


def _flat(hparams: dict[str, Any]) -> dict[str, Any]:
    from resolute.search.space import flatten

    return flatten(hparams)


def _record(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else dict(vars(obj))
