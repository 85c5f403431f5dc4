"""The Cosmos autoregressive world model on megatron-core, and its lean training engine ("mcore").

Public entry points (stable; the infer stage and the bench build on them):
- `model.build_model(preset, grid, tp=..., precision=...)` -> `CosmosModel`; see `CosmosModel.forward`.
- `checkpoint.load_for_inference(ckpt_dir, preset, grid, tp)` -> `CosmosModel` in eval mode.
- `train.train(spec, paths, dataset)` runs the finetune stage's mcore engine (`harness.stages.finetune`).
"""
