"""CPython's cyclic garbage collector against the import graph of torch, megatron-core and NeMo.

A task that imports NeMo 2 (the NeMo engine, its Lightning and its collections) holds ~800,000 objects that live
as long as the process. The collector walks every tracked object at each full collection: a dozen times while
they are being imported (2.3 of the 10.4 CPU-s that import takes on a 2-core test machine) and again while the
interpreter shuts down (a NeMo process took 14.1 s from start to exit against 10.1 s when it skipped the
shutdown). `quiet_imports` pauses the collector while a block imports them and then moves everything alive to
the collector's permanent generation (`gc.freeze`), which no collection, the shutdown's included, walks again.
Garbage made afterwards (a training step's, a test's) is collected as before; what was frozen is freed by
reference counting as usual, only a reference cycle among frozen objects outlives its use.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_imports() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
