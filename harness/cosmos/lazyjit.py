"""Import-time `torch.compile` decorations compiled on their first call, not when their module is imported.

`megatron.core.jit.jit_fuser` is `torch.compile`, applied as a decorator at import time to a dozen functions
(`fusions/fused_bias_geglu.py`, `fused_bias_swiglu.py`, ...). Decorating already imports TorchDynamo and
Inductor's `compile_fx`: ~2.7 of the ~6 CPU-s `import megatron.core` costs, paid by every process that imports
megatron (each tokenize, merge, finetune and infer task, each spawned rank) whether or not it ever calls one of
them (the CPU paths and generation never do). NeMo's LLM collection does the same once (Hyena's decay filter in
`hyena_utils`, `@torch.compile(mode="max-autotune")`), which `nemo.collections.llm` imports with every model
family: Inductor's `compile_fx` again (~0.7 CPU-s) for each NeMo-engine task and rank, none of which trains a
Hyena model. Compilation itself is lazy in torch anyway (it happens on the first call); this moves the import of
the compiler to that first call too. Behaviour is otherwise the same: the first call compiles with the same
arguments and later calls go to the compiled function.

The same hook defers two optional integrations megatron-core imports eagerly at module level, `wandb`
(`megatron/core/timers.py`, for its timer logging) and `multistorageclient` (`msc_utils.py`, object-store
checkpoint paths): neither is used through megatron by the harness, which logs to W&B itself, and together they
were ~0.85 of the ~4.5 CPU-s a process spends importing megatron-core and the model (8 runs each, 2-core machine).
They are bound as `importlib.util.LazyLoader` modules: present, so megatron's `try: import` sees them installed,
and executed on their first attribute access (the harness's own `import wandb` in a tracked run loads the real
package then). A package that is not installed stays not installed.

Installed from `harness/__init__.py` as a meta-path hook that only acts when one of `TARGETS` or `DEFERRED` is
first imported, so nothing here imports torch, megatron or NeMo before they would be imported anyway.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any, Callable, Sequence

TARGETS = frozenset({
    "megatron.core.jit",
    "nemo.collections.llm.gpt.model.megatron.hyena.hyena_utils",
})
DEFERRED = frozenset({"wandb", "multistorageclient"})
"""Top-level packages loaded on first attribute access instead of at import."""


def lazy_compile(compile_fn: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile` with the same signature that defers the real call to the decorated function's first call."""

    def compile_later(model: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        if model is None:  # decorator with arguments: @torch.compile(...)
            return lambda m: compile_later(m, **kwargs)
        compiled: list[Callable[..., Any]] = []
        lock = threading.Lock()

        @functools.wraps(model)
        def first_call_compiles(*args: Any, **kw: Any) -> Any:
            if not compiled:
                with lock:
                    if not compiled:
                        compiled.append(compile_fn(model, **kwargs))
            return compiled[0](*args, **kw)

        return first_call_compiles

    return compile_later


class _Loader(importlib.abc.Loader):
    """Executes a target module with `torch.compile` lazy, so what it decorates (megatron's `jit_fuser`
    included) binds to the lazy version."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        import torch

        real = torch.compile
        torch.compile = lazy_compile(real)  # same call signature, deferred
        try:
            self.inner.exec_module(module)
        finally:
            torch.compile = real


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in TARGETS and fullname not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader) if fullname in TARGETS else importlib.util.LazyLoader(spec.loader)
        return spec


def install() -> None:
    """Idempotent; a no-op once every target is imported."""
    if not (TARGETS | DEFERRED) <= sys.modules.keys() and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
