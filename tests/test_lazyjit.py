"""megatron-core's import-time `torch.compile` decorations are deferred to the first call (harness.cosmos.lazyjit)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from harness.cosmos.lazyjit import lazy_compile


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
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"dynamo": False, "inductor": False, "fuser": "lazy_compile.<locals>.compile_later",
                   "restored": True, "wrapped": "first_call_compiles"}
