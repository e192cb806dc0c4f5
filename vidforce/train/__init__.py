"""Training: DeepSpeed engines, the loop, checkpoints, EMA, logging, drift hook (docs/architecture.md).

Import the submodules directly (``vidforce.train.trainer.train``); this package imports nothing heavy.
"""
