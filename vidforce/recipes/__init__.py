"""Recipes built on the library: the mini-world experiment (``mini``), its long-rollout evaluation
(``evaluate``, ``report``, ``comparisons``: metrics, tables and the pre-registered decisions), the
error-injection probe (``injection``: corruptions and half-lives; ``probing``: the probe over the evaluation's
models) and teacher ODE trajectories for ODE init (``ode_pairs``)."""
