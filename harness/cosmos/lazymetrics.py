"""torchmetrics' own metrics imported on first use, not whenever Lightning is imported.

Lightning imports `torchmetrics` at import time for two names, `Metric` and `MetricCollection` (the types its
logging and `LightningModule` check values against). torchmetrics' `__init__` then imports every metric it ships,
functional and modular (text, audio, image, classification, ...): ~1.3 CPU-s in torchmetrics' own modules out of
the NeMo engine's import, paid by every NeMo-engine task and rank, none of which computes a torchmetrics metric.

The hook runs torchmetrics' `__init__` up to its first metric import (`SPLIT`: the logger, the version, the
numpy / PIL / scipy compatibility patches, so every global side effect stays eager), binds `Metric` and
`MetricCollection` from their own modules, and runs the rest of the same `__init__` in the same namespace on the
first access to any other name (a module `__getattr__`): `torchmetrics.Accuracy`, `from torchmetrics import *`
and every submodule import behave as before, only later. Where the `__init__` has no `SPLIT` line (another
torchmetrics release), it runs whole, as without the hook.

Installed from `harness/__init__.py` like `lazyjit`: a meta-path hook that acts only when `torchmetrics` is first
imported, so nothing here imports torch or torchmetrics before they would be imported anyway.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import CodeType, ModuleType
from typing import Any, Callable, Sequence

TARGET = "torchmetrics"
SPLIT = "\nfrom torchmetrics import functional"
# Imported in this order before the deferred part, as the whole `__init__` imports them (via its functional
# metrics): `torchmetrics.metric` and `torchmetrics.utilities.checks` import each other, and the cycle resolves
# only when `utilities` comes first.
EAGER = ("torchmetrics.utilities", "torchmetrics.metric", "torchmetrics.collections")
EAGER_NAMES = {"Metric": "torchmetrics.metric", "MetricCollection": "torchmetrics.collections"}


def split_init(source: str) -> tuple[str, str] | None:
    """(eager head, deferred rest) of torchmetrics' `__init__` source; the rest padded with blank lines so its
    tracebacks name the file's own line numbers. None: no `SPLIT` line, run it whole."""
    head, sep, rest = source.partition(SPLIT)
    if not sep:
        return None
    return head, "\n" * head.count("\n") + sep + rest


def rest_on_first_use(module: ModuleType, rest: CodeType) -> Callable[[str], Any]:
    """The module `__getattr__` that runs `rest` in the module's namespace once, then answers from it. A thread
    that asks while another runs `rest` waits for it; an access from inside `rest` itself (the same thread) sees
    the partly initialised module, as in a plain import."""
    lock = threading.RLock()
    ran: list[bool] = []

    def __getattr__(name: str) -> Any:
        with lock:
            if not ran:
                ran.append(True)
                exec(rest, module.__dict__)
                if module.__dict__.get("__getattr__") is __getattr__:
                    del module.__dict__["__getattr__"]
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}") from None

    return __getattr__


class _Loader(importlib.abc.Loader):
    """Runs the head of torchmetrics' `__init__` now and the rest on first use (see the module docstring)."""

    def __init__(self, inner: importlib.abc.InspectLoader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        source = self.inner.get_source(module.__name__)
        parts = None if source is None else split_init(source)
        if parts is None:
            self.inner.exec_module(module)
            return
        filename = module.__spec__.origin if module.__spec__ and module.__spec__.origin else module.__name__
        exec(compile(parts[0], filename, "exec"), module.__dict__)
        for name in EAGER:
            importlib.import_module(name)
        for attr, where in EAGER_NAMES.items():
            setattr(module, attr, getattr(sys.modules[where], attr))
        rest = compile(parts[1], filename, "exec")
        module.__getattr__ = rest_on_first_use(module, rest)  # type: ignore[method-assign]  # PEP 562 module __getattr__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.abc.InspectLoader):
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Idempotent; a no-op once torchmetrics is imported."""
    if TARGET not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
