"""Stage workers: one module per stage, each exposing `run(spec, task, paths) -> None`, plus the helpers they
share (`dataset`, `staged`, `ranks`, `inputs`). Which module runs which stage is the stage registry's
(`harness.core.stages`); the entry every task runs, which loads the spec and writes the completion marker, is
`harness.launch.worker.run_task`.
"""
