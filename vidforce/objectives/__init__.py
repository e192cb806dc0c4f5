"""Training objectives (plugins). ``build(cfg)`` returns the one named by ``objective.name``."""
from vidforce.objectives.base import Batch, Nets, Objective, StepContext
from vidforce.objectives.add import ADD
from vidforce.objectives.consistency import CD, CT, CTM, LCM, SCM
from vidforce.objectives.dmd import DMD
from vidforce.objectives.dmd2 import DMD2
from vidforce.objectives.extended_dmd import ExtendedDMD
from vidforce.objectives.forcing import DiffusionForcing, FlowMatching, TeacherForcing
from vidforce.objectives.flowmap import Eulerian, Lagrangian, MeanFlow, Semigroup, Shortcut
from vidforce.objectives.gan import DMDGAN, GAN
from vidforce.objectives.grpo import GRPO
from vidforce.objectives.ladd import LADD
from vidforce.objectives.ode_init import ODEInit
from vidforce.objectives.progressive import Guided, Progressive
from vidforce.objectives.sid import SiD
from vidforce.objectives.trajectory import KD, Reflow

REGISTRY: dict[str, type[Objective]] = {o.name: o for o in (DMD, ExtendedDMD, SiD, GAN, DMDGAN, ODEInit, FlowMatching,
                                                            DiffusionForcing, TeacherForcing, CD, CT, LCM, DMD2, ADD,
                                                            LADD, GRPO,
                                                            SCM, CTM, MeanFlow, Shortcut, Semigroup, Lagrangian,
                                                            Eulerian, KD, Reflow, Progressive, Guided)}


def build(cfg) -> Objective:
    """The objective named by ``cfg.objective.name``."""
    name = cfg.objective.name
    if name not in REGISTRY:
        raise ValueError(f"objective.name must be one of {sorted(REGISTRY)}, got {name!r}")
    return REGISTRY[name](cfg)


__all__ = ["Batch", "Nets", "Objective", "StepContext", "REGISTRY", "build"]
