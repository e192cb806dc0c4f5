"""Ground-truth harness of the objective zoo: Gaussian-mixture data with a closed-form velocity (CPU, seconds)."""
