"""megatron-core's and NeMo's import-time `torch.compile` decorations are deferred to the first call
(harness.cosmos.lazyjit)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from harness.cosmos.lazyjit import lazy_compile

# Modules the NeMo engine's import never needs (see the test below): what the two hooks keep out.
NEVER_NEEDED = ("torch._inductor.compile_fx",)


def fresh_process(code: str, timeout: int) -> Any:
    """`python -c code` in a new interpreter; its last stdout line parsed as JSON."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_compiles_once_on_the_first_call_with_the_decorators_arguments() -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_compile(fn: Any, **kw: Any) -> Any:
        calls.append((fn, kw))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    lazy = lazy_compile(fake_compile)

    @lazy
    def plain(x: int) -> int:
        return x + 1

    @lazy(dynamic=False, mode="max-autotune")
    def with_args(x: int) -> int:
        return 2 * x

    assert calls == []  # decorating compiles nothing
    assert plain.__name__ == "plain"
    threads = [threading.Thread(target=plain, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plain(1) == ("compiled", 2) and with_args(3) == ("compiled", 6)
    assert [(fn.__name__, kw) for fn, kw in calls] == [("plain", {}),
                                                      ("with_args", {"dynamic": False, "mode": "max-autotune"})]


def test_importing_megatron_through_the_harness_loads_no_compiler() -> None:
    """A fresh process: megatron-core imported after the harness binds `jit_fuser` to the lazy compile, TorchDynamo
    and Inductor stay unimported, and `torch.compile` itself is torch's own again afterwards."""
    code = ("import sys, json, harness, torch; real = torch.compile; import megatron.core; "
            "from megatron.core import jit; from megatron.core.fusions import fused_bias_swiglu as f; "
            "print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules, "
            "'inductor': 'torch._inductor.compile_fx' in sys.modules, 'fuser': jit.jit_fuser.__qualname__, "
            "'restored': torch.compile is real, 'wrapped': f.swiglu.__code__.co_name}))")
    got = fresh_process(code, timeout=300)
    assert got == {"dynamo": False, "inductor": False, "fuser": "lazy_compile.<locals>.compile_later",
                   "restored": True, "wrapped": "first_call_compiles"}


def test_megatrons_optional_integrations_load_on_their_first_use() -> None:
    """A fresh process: megatron-core imports wandb and multistorageclient at module level; through the harness
    they are bound but not executed (megatron's timers hold the very module object), and the first attribute
    access loads the real package."""
    names = [n for n in ("multistorageclient", "wandb") if importlib.util.find_spec(n) is not None]
    if not names:
        pytest.skip("neither wandb nor multistorageclient is installed")
    code = ("import sys, json, types, harness, megatron.core, megatron.core.timers as timers; "
            f"names = {names!r}; "
            "before = {n: type(sys.modules[n]).__name__ for n in names}; "
            "same = timers.wandb is sys.modules.get('wandb', None); "
            "files = [bool(sys.modules[n].__file__) for n in names]; "
            "after = {n: type(sys.modules[n]) is types.ModuleType for n in names}; "
            "print(json.dumps({'before': before, 'same': same, 'files': files, 'after': after, "
            "'init': callable(getattr(sys.modules.get('wandb'), 'init', None))}))")
    got = fresh_process(code, timeout=300)
    assert got["before"] == {n: "_LazyModule" for n in names}
    assert got["files"] == [True] * len(names) and got["after"] == {n: True for n in names}
    if "wandb" in names:
        assert got["same"] and got["init"]


@pytest.mark.skipif(importlib.util.find_spec("nemo") is None, reason="NeMo 2 not installed")
def test_the_nemo_engines_import_loads_no_compiler() -> None:
    """A fresh process importing the NeMo finetune engine (NeMo's LLM collection, Lightning, megatron-core):
    Inductor's `compile_fx` (only NeMo's Hyena filter and megatron's fusions compile at import time; the harness
    calls neither at import) stays unimported; the Hyena filter is the lazy wrapper, and `torch.compile` is not
    left lazy (something in NeMo's import rebinds it, so not `is` the original)."""
    code = ("import sys, json, torch; from harness.lib.heap import quiet_imports\n"
            "with quiet_imports(): import harness.stages.finetune.nemo as engine  # as the finetune stage imports it\n"
            f"heavy = sorted(m for m in {NEVER_NEEDED!r} if m in sys.modules); "
            "from nemo.collections.llm.gpt.model.megatron.hyena import hyena_utils as h; "
            "print(json.dumps({'available': engine.available(), 'heavy': heavy, 'lazy': torch.compile.__qualname__, "
            "'filter': h.ExplicitSingleDecayFilter.filter.__code__.co_name}))")
    got = fresh_process(code, timeout=600)
    assert got == {"available": True, "heavy": [], "lazy": "compile", "filter": "first_call_compiles"}
