"""Pure core: the run spec, the plan and every number derived from it, run-directory paths, errors. No torch, and
nothing from the layers above."""
