"""A dataset whose items take long to make, for tests of decode workers outliving their task (importable by a
fork server, which a class defined in a test's `__main__` is not)."""

from __future__ import annotations

import time

import torch


class SlowItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> int:
        time.sleep(0.2)
        return i
