"""Backends that start stage tasks and report on them: `backend` (the protocol and the values it passes),
`slurm` (sbatch arrays through submitit's SlurmExecutor, scripts from `render`), `local` (a detached driver
over submitit's local executor), `slurmcli` (the one boundary to Slurm's client tools) and `task` (the
callable every task runs). Deciding what to submit, and recording it, is `harness.ops.submit`'s work.
"""
