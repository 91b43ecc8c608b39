"""resolute: elastic data-parallel training and hyperparameter search on Ray.

The public API is small: ``TrialContext`` (what ``train(ctx)`` receives; ``TrialContext.local``
builds one without a cluster), ``local_context`` and ``__version__``. It is imported lazily so
that ``import resolute`` (and the CLI's validate/preview paths) stay free of torch and Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["TrialContext", "local_context", "__version__"]

if TYPE_CHECKING:
    from resolute.context import TrialContext, local_context


def __getattr__(name: str) -> Any:
    if name in ("TrialContext", "local_context"):
        from resolute import context

        return getattr(context, name)
    raise AttributeError(f"module 'resolute' has no attribute {name!r}")
