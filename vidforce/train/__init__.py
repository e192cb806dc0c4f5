"""Training: DeepSpeed engines, the loop, checkpoints, EMA, logging, drift hook (see DESIGN.md "Distributed").

Import the submodules directly (``vidforce.train.trainer.train``); this package imports nothing heavy.
"""
