"""The distribution-matching and adversarial objectives on the ground-truth harness: DMD, DMD2, ADD, LADD.

Every student is an :class:`MLPDenoiser` started from the flow-matching teacher (:mod:`vidforce.toy.train`) and
trained for an ``n``-step few-step sampler on ``euler_grid(n, 1)`` (x0 prediction, fresh noise to the next
sigma: :func:`vidforce.toy.train.cm_sample` samples it). Each iteration draws one exit step ``k``; the student's
step-k input is its own chain from noise (:func:`vidforce.objectives.dmd2.backward_simulation`) or a data point
noised to ``s_k``. The losses are the video plugins' pure functions with their config sections' settings
(``ObjectiveConfig``):

- ``dmd``: a fake-score critic (from the teacher) trained by flow matching on the student's samples every
  iteration, the generator every ``gen_update_every`` iterations by ``dmd_direction`` / ``dmd_loss`` at a
  training sigma ``U[min_step, max_step]`` (shift 1); backward simulation on, no regression (vidforce's ``dmd``);
- ``dmd2``: ``dmd`` + ``gan.weight`` x the non-saturating GAN of a head on the critic's features (after
  ``max(1, depth // 2)`` layers, as ``CriticWithHead``), real = data noised to the same sigma;
- ``add``: ``hinge + add.distill_weight x distillation_loss`` against heads on every layer of a frozen copy of
  the teacher read on clean points (sigma 0), finite-difference R1 on data; one discriminator update per
  generator update; inputs noised data;
- ``ladd``: the hinge GAN alone, heads on every layer of the frozen teacher at ``s = sigmoid(loc + scale z)``;
  data = the mixture's samples (or the teacher's 64-step Euler samples with ``synthetic``); inputs noised data.

Both players use Adam with ``OptimConfig``'s betas (0, 0.999) and the harness learning rate, cosine-decayed to 10%
over the run.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidforce.config import ObjectiveConfig, OptimConfig, ScheduleConfig
from vidforce.diffusion import add_noise, sample_train_sigma, t_from_sigma
from vidforce.objectives import add as ADD
from vidforce.objectives import gan as GAN
from vidforce.objectives.base import flow_matching_loss, frozen
from vidforce.objectives.discriminator import FeatureDiscriminator
from vidforce.objectives.dmd import dmd_direction, dmd_loss
from vidforce.objectives.dmd2 import backward_simulation
from vidforce.objectives.ladd import logit_normal_sigma
from vidforce.sampling import Denoiser, euler_grid
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, euler_sample

OBJECTIVES = ("dmd", "dmd2", "add", "ladd")


@dataclass
class Run:
    """One student to train: the objective, its step count, its inputs and (LADD) its data."""
    name: str
    steps: int
    backward_simulation: bool
    synthetic: bool = False     # LADD's data side: the teacher's Euler-64 samples instead of the mixture's


def default_inputs(name: str) -> bool:
    """Whether ``name`` trains on its own chain (DMD, DMD2) or on noised data (ADD, LADD), as its paper."""
    if name not in OBJECTIVES:
        raise ValueError(f"adversarial harness objective must be one of {OBJECTIVES}, got {name!r}")
    return name in ("dmd", "dmd2")


def _full(s: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), s, dtype=x.dtype)


def x0_of(net):
    """``(x, s) -> x0`` of a network through the denoiser contract (``s`` a float or ``[B]``)."""
    return lambda x, s: Denoiser(net, None).x0(x, _full(s, x) if isinstance(s, float) else s)


def taps(net: MLPDenoiser) -> list[nn.Module]:
    """The MLP's hidden activations (one per layer)."""
    return [m for m in net.body if isinstance(m, nn.SiLU)]


class Players:
    """The student and its opponent(s) for one run, with the losses of one iteration."""

    def __init__(self, run: Run, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig, ocfg: ObjectiveConfig,
                 g: torch.Generator):
        self.run, self.teacher, self.gmm, self.h, self.o, self.g = run, teacher, gmm, h, ocfg, g
        self.sigmas = euler_grid(run.steps, 1.0)[:-1]
        torch.manual_seed(h.seed + 1)
        self.student = copy.deepcopy(teacher).requires_grad_(True)
        if run.name in ("dmd", "dmd2"):
            self.critic = copy.deepcopy(teacher).requires_grad_(True)
            layer = taps(self.critic)[max(1, h.depth // 2) - 1]
            self.disc = FeatureDiscriminator(self.critic, [layer], h.width, frozen=False) if run.name == "dmd2" \
                else None
        else:
            features = copy.deepcopy(teacher)
            self.disc = FeatureDiscriminator(features, taps(features), h.width, frozen=True)
        self.opponent = self.disc if self.disc is not None else self.critic
        self.every = ocfg.gen_update_every if run.name in ("dmd", "dmd2") else 1
        if run.synthetic:
            self.pool = euler_sample(teacher, torch.randn(16 * h.batch, gmm.dim, generator=g), 64)

    def data(self) -> Tensor:
        if self.run.synthetic:
            return self.pool[torch.randint(len(self.pool), (self.h.batch,), generator=self.g)]
        return self.gmm.sample(self.h.batch, self.g).float()

    def sample(self, grad: bool) -> Tensor:
        """The student's x0 at a random exit step, from its own chain or from noised data."""
        k = int(torch.randint(len(self.sigmas), (1,), generator=self.g))
        s = self.sigmas[k]
        noise = torch.randn(self.h.batch, self.gmm.dim, generator=self.g)
        if self.run.backward_simulation:
            x = backward_simulation(x0_of(self.student), noise, self.sigmas, k, self.g)
        else:
            x = add_noise(self.data(), noise, torch.tensor(s))
        with torch.set_grad_enabled(grad):
            return x0_of(self.student)(x, s)

    def train_sigma(self) -> Tensor:
        s = ScheduleConfig()
        return sample_train_sigma((self.h.batch,), 1.0, s.min_step, s.max_step, self.g, rule="range")

    def ladd_sigma(self) -> Tensor:
        return logit_normal_sigma(self.h.batch, self.o.ladd.sigma_loc, self.o.ladd.sigma_scale, self.g)

    def logits(self, x: Tensor, s: Tensor | None) -> Tensor:
        """Per-head logits of ``x`` (re-noised to ``s`` with fresh noise unless ``s`` is None: clean)."""
        if s is None:
            return self.disc.logits(x, torch.zeros(x.shape[0]))
        eps = torch.randn(x.shape, generator=self.g)
        return self.disc.logits(add_noise(x, eps, s), t_from_sigma(s))

    def critic_loss(self) -> Tensor:
        fake = self.sample(grad=False)
        name, o = self.run.name, self.o
        if name in ("dmd", "dmd2"):
            s = self.train_sigma()
            eps = torch.randn(fake.shape, generator=self.g)
            loss = flow_matching_loss(Denoiser(self.critic, None).flow(add_noise(fake, eps, s), s), fake, eps)
            if name == "dmd2":
                loss = loss + o.gan.weight * GAN.discriminator_loss(self.logits(self.data(), s), self.logits(fake, s),
                                                                    o.gan.relativistic)
            return loss
        if name == "add":
            real = self.data()
            real_logits = self.logits(real, None)
            pert = self.logits(real + o.gan.r_sigma * torch.randn(real.shape, generator=self.g), None)
            return (GAN.hinge_discriminator_loss(real_logits, self.logits(fake, None))
                    + o.add.r1_weight * GAN.finite_difference_penalty(real_logits, pert, o.gan.r_sigma))
        s = self.ladd_sigma()
        return GAN.hinge_discriminator_loss(self.logits(self.data(), s), self.logits(fake, s))

    def generator_loss(self) -> Tensor:
        x = self.sample(grad=True)
        name, o = self.run.name, self.o
        with frozen(self.opponent):
            if name in ("dmd", "dmd2"):
                s = self.train_sigma()
                with torch.no_grad():
                    x_t = add_noise(x, torch.randn(x.shape, generator=self.g), s)
                    direction = dmd_direction(x, x0_of(self.teacher)(x_t, s), x0_of(self.critic)(x_t, s))
                loss = dmd_loss(x, direction)
                if name == "dmd2":
                    loss = loss + o.gan.weight * GAN.generator_gan_loss(self.logits(x, s))
                return loss
            if name == "add":
                s = self.train_sigma()
                with torch.no_grad():
                    target = x0_of(self.teacher)(add_noise(x, torch.randn(x.shape, generator=self.g), s), s)
                distill = ADD.distillation_loss(x, target, s[:, None])
                return GAN.hinge_generator_loss(self.logits(x, None)) + o.add.distill_weight * distill
            return GAN.hinge_generator_loss(self.logits(x, self.ladd_sigma()))


def _adam(params, lr: float, steps: int):
    betas = tuple(OptimConfig().betas)
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 + 0.45 * (1 + math.cos(math.pi * k / steps)))
    return opt, sched


def _step(opt, sched, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def train_student(run: Run, teacher: MLPDenoiser, gmm: GMM, h: HarnessConfig,
                  ocfg: ObjectiveConfig | None = None) -> tuple[MLPDenoiser, float]:
    """Train one run for ``h.steps`` generator updates (its opponent every iteration). Returns the student and the
    wall seconds."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(h.seed + 2)
    players = Players(run, teacher, gmm, h, ObjectiveConfig() if ocfg is None else ocfg, g)
    iterations = h.steps * players.every
    gen_opt = _adam(players.student.parameters(), h.lr, h.steps)
    opp_opt = _adam(players.opponent.parameters(), h.lr, iterations)
    start = time.perf_counter()
    for k in range(iterations):
        _step(*opp_opt, players.critic_loss())
        if k % players.every == 0:
            _step(*gen_opt, players.generator_loss())
    return players.student, time.perf_counter() - start
