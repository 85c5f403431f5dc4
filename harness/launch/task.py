"""The callable submitit pickles for every task: checkpointable, so a preempted or timed-out task is
requeued by submitit's own signal handler and picks up from its last complete output on restart."""

from __future__ import annotations

from dataclasses import dataclass

import submitit


@dataclass(frozen=True)
class StageTask:
    run_dir: str
    stage: str
    task: int

    def __call__(self) -> str:
        from harness.launch.worker import run_task

        return run_task(self.run_dir, self.stage, self.task)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Nothing to save here: workers checkpoint on their own schedule and resume from their last
        complete output, so a requeue simply runs the same task again."""
        return submitit.helpers.DelayedSubmission(self)
