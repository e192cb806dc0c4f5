"""Recipes built on the library: the mini-world experiment (``mini``), its long-rollout evaluation
(``evaluate``, ``comparisons``) and teacher ODE trajectories for ODE init (``ode_pairs``)."""
