"""Typed errors. Every user-facing error says what is wrong and what to do about it."""

from __future__ import annotations


class ResoluteError(Exception):
    """Base class of every error resolute raises on purpose."""


class ConfigError(ResoluteError):
    """The experiment configuration is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid experiment config{where} ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class SearcherError(ResoluteError):
    """A searcher was driven against its protocol (an unknown trial, a result after Shutdown)."""


class IllegalTransition(ResoluteError):
    """A trial or experiment was asked to move between lifecycle states that do not connect."""


class EntrypointError(ResoluteError):
    """The experiment's ``entrypoint`` cannot be imported or is not callable."""


class StorageError(ResoluteError):
    """Checkpoint or artifact storage failed (missing path, permissions, bad URI)."""


class NotFound(ResoluteError):
    """An experiment, trial or checkpoint that was asked for does not exist."""


class SchedulerError(ResoluteError):
    """The control plane refused a request (an experiment that can never fit, a bad state)."""


class HorovodError(ResoluteError):
    """The Horovod backend cannot run: Horovod missing or built without a needed feature, or
    its rendezvous failed."""


class JournalError(ResoluteError):
    """The control-plane journal cannot be opened or written (bad URL, a schema from another
    resolute version, a locked or read-only database)."""


class ResourcesUnavailable(ResoluteError):
    """Workers could not be placed: the cluster lacks free slots of the needed shape."""


class RuntimeEnvError(EntrypointError):
    """The trials' Ray runtime_env (the uploaded context_dir, pip packages) could not be set
    up on a worker, or context_dir could not be packaged: every trial would fail alike."""
