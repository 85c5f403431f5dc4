"""`harness.lib.heap.quiet_imports`: no collection while the block imports, everything alive frozen after it, and
the collector's own state (enabled or not) given back, an import error included. In a fresh interpreter each: a
frozen heap outlives the test."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_the_block_runs_no_collection_and_leaves_its_objects_frozen() -> None:
    out = _python("""
        import gc
        from harness.lib.heap import quiet_imports
        runs = []
        gc.callbacks.append(lambda phase, info: runs.append(info["generation"]) if phase == "start" else None)
        before = gc.get_freeze_count()
        with quiet_imports():
            import email.mime.multipart, json.decoder, xml.dom.minidom  # thousands of new objects
            assert not gc.isenabled()
            junk = [[i] for i in range(100_000)]  # far past gen0's threshold
        print(len(runs), gc.isenabled(), gc.get_freeze_count() - before > 100_000)
    """)
    assert out == "0 True True"


def test_a_disabled_collector_stays_disabled_and_an_import_error_reenables_it() -> None:
    out = _python("""
        import gc
        from harness.lib.heap import quiet_imports
        gc.disable()
        with quiet_imports():
            pass
        disabled = not gc.isenabled()
        gc.enable()
        try:
            with quiet_imports():
                import no_such_module_here  # noqa: F401
        except ImportError:
            pass
        print(disabled, gc.isenabled())
    """)
    assert out == "True True"
