"""Structured configuration: typed dataclasses are the only home of defaults.

``load(yaml_path, overrides)`` merges, in order: the schema defaults, the model presets named by
``model.preset`` / ``teacher.preset``, the YAML file (and the files it ``inherit``s, relative paths),
then ``key=value`` overrides; unknown keys and wrong types raise ``ValueError`` naming the key, then
``validate`` checks values and names the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "wan2.1-t2v-1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, text_dim=4096, freq_dim=256,
                            in_dim=16, out_dim=16, patch_size=[1, 2, 2], text_len=512),
    "wan2.1-t2v-14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096, freq_dim=256,
                           in_dim=16, out_dim=16, patch_size=[1, 2, 2], text_len=512),
    "tiny": dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, freq_dim=16,
                 in_dim=12, out_dim=12, patch_size=[1, 2, 2], text_len=8),
    "mini": dict(dim=256, ffn_dim=768, num_heads=4, num_layers=8, text_dim=64, freq_dim=64,
                 in_dim=12, out_dim=12, patch_size=[1, 2, 2], text_len=16),
    "mini_v2": dict(dim=320, ffn_dim=960, num_heads=5, num_layers=10, text_dim=64, freq_dim=64,
                    in_dim=12, out_dim=12, patch_size=[1, 2, 2], text_len=16),
}


@dataclass
class ModelConfig:
    """A Wan2.1 DiT. ``preset`` fills the architecture fields; explicit keys override it."""
    preset: str = "tiny"            # preset filling the architecture fields (MODEL_PRESETS) | custom
    dim: int = 32                   # hidden width of the DiT
    ffn_dim: int = 64               # feed-forward width of each block
    num_heads: int = 2              # attention heads (head dim = dim / num_heads, even)
    num_layers: int = 2             # transformer blocks
    text_dim: int = 16              # width of the text embeddings (umT5: 4096)
    freq_dim: int = 16              # sinusoidal timestep embedding width
    in_dim: int = 12                # latent channels in
    out_dim: int = 12               # latent channels out
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2]) # (frames, height, width) patch of a token
    text_len: int = 8               # text tokens attended (shorter contexts are zero-padded to it)
    cross_attn_norm: bool = True    # layer norm before cross-attention (Wan2.1: true)
    eps: float = 1e-6               # norm epsilon
    rope_max_len: int = 1024        # frames of the RoPE table (absolute RoPE's longest video)
    checkpoint: str = ""            # weights to load (Wan original / diffusers / Self-Forcing .pt / ours)
    checkpoint_key: str = "auto"    # for training checkpoints: generator | generator_ema | critic | auto
    time_to: bool = False           # second time input t_to of a flow map (ctm, meanflow, shortcut,
                                    # flowmap_lagrangian, flowmap_eulerian, flowmap_semigroup): a
                                    # zero-initialised embedding of t - t_to
    guidance_input: bool = False    # guidance scale input w (a w-conditioned guided student, objective.guided):
                                    # a zero-initialised embedding of w; sampled at objective.guidance.scale


@dataclass
class CausalConfig:
    frames_per_chunk: int = 3       # latent frames generated per chunk (Wan: 3 x 1560 tokens)
    window: int = 0                 # latent frames attended in all (sink included); 0 = the whole video
    sink: int = 0                   # first frames never evicted
    rope_mode: str = "absolute"     # absolute | relative
    attention: str = "auto"         # auto | math | sdpa | cudnn | flash | efficient | flash_attn | jvp
                                    # (forward-mode AD in O(L) memory: scm / meanflow / flowmap_lagrangian /
                                    # flowmap_eulerian on CUDA)
    full_sequence: str = "loop"     # block-causal full-sequence pass: loop | flex | dense


@dataclass
class ScheduleConfig:
    shift: float = 5.0              # timestep shift s' = shift s / (1 + (shift - 1) s) of training draws and sampling
    denoising_steps: list[float] = field(default_factory=lambda: [1000.0, 750.0, 500.0, 250.0])  # few-step times
    warp: bool = True               # warp the step list through the shifted table
    min_step: float = 0.02          # training t range (fraction of T) of every objective that noises:
    max_step: float = 0.98          # DMD's [0.02, 0.98]; a model trained from data needs [0, 1]
    time_sampling: str = "range"    # range: u ~ U[min, max], shifted | clamp: integer t ~ U[0, T), shifted,
                                    # sigma clamped to [min, max] (Self Forcing's DMD; diffusion.sample_train_sigma)
    context_noise: float = 0.0      # timestep of the cache refresh pass (output re-noised to it: sampling.py)


@dataclass
class RolloutConfig:
    num_frames: int = 21            # generator rollout / teacher horizon K (latent frames)
    exit_step: str = "random"       # random | last
    cache_grad: str = "detach"      # detach | exit_step (public Self-Forcing code: gradient reaches earlier
                                    # chunks' exit-step K/V through the cache; rollout.py)
    grad_chunks: int = 0            # chunks (counted from the end) that keep grad; 0 = all
    long_frames: int = 0            # Self-Forcing++: roll out up to N latent frames (0 = off)
    long_sampling: str = "uniform"  # N per iteration: fixed | uniform (chunk-aligned in [K, N])
    window_sampling: str = "uniform"  # start of the K-frame window: uniform | beta (Beta(1,2))
    cuda_graphs: bool = False       # replay the no_grad chunk forwards of training rollouts from CUDA graphs
                                    # (models/graphs.py, as stream.cuda_graphs; needs a rolling causal.window)


@dataclass
class GuidanceConfig:
    """Classifier-free guidance of the teacher (DMD / SiD / GAN real score, ODE pairs, teacher sampling)."""
    scale: float = 3.0              # g; 1 (uncond) or 0 (cond) = no guidance
    convention: str = "uncond"      # uncond: x0_u + g (x0_c - x0_u) (Wan) | cond: x0_c + g (x0_c - x0_u)
                                    # (Self Forcing's code: its g = 3 is uncond's g = 4)


@dataclass
class SiDConfig:
    alpha: float = 1.2              # SiD's alpha (Zhou et al. 2024)


@dataclass
class GANConfig:
    """Discriminator head on critic features: ``gan`` (GAN only) and ``dmd_gan`` (DMD + weighted GAN)."""
    weight: float = 0.01            # weight of the GAN terms (generator and discriminator)
    relativistic: bool = False      # relativistic pairing softplus(-(D(real) - D(fake)))
    r1_weight: float = 0.0          # finite-difference R1 on real clips
    r2_weight: float = 0.0          # finite-difference R2 on fake clips
    r_sigma: float = 0.01           # perturbation scale of finite-difference R1/R2


@dataclass
class ODEInitConfig:
    pairs: str = ""                 # safetensors file from tools/make_ode_pairs.py (also the couplings of kd
                                    # and reflow: its sigma-1 noise and its endpoint)
    clean_context: bool = False     # earlier chunks attended as the teacher's clean endpoints (as inference sees)


@dataclass
class KDConfig:
    """Knowledge distillation: a one-step student (``schedule.denoising_steps: [1000]``) regressed from the pairs'
    pure noise onto their endpoints (``objective.ode_init.pairs``)."""
    clean_context: bool = True      # earlier chunks attended as the teacher's clean endpoints (as inference
                                    # sees) | false: as their pure noise (no content to condition on)


@dataclass
class FlowLossConfig:
    """Flow-matching regression of the data-trained objectives."""
    weighting: str = "uniform"      # uniform | wan (Wan's timestep weighting, normalised to mean 1)


@dataclass
class FlowMatchingConfig(FlowLossConfig):
    cfg_dropout: float = 0.1        # probability of training on the negative prompt


@dataclass
class TeacherForcingConfig(FlowLossConfig):
    context_noise: float = 0.0      # timestep of the clean context


@dataclass
class ReflowConfig(FlowLossConfig):
    """Reflow: flow matching on the straight line between the pairs' sigma-1 noise and their endpoint
    (``objective.ode_init.pairs``), one training sigma per chunk. A further round: new pairs from this model."""
    clean_context: bool = True      # earlier chunks attended as the coupled clean endpoints (as inference
                                    # sees) | false: block-causal over the noisy sequence


@dataclass
class CTConfig:
    """Consistency training: a Karras-like sigma grid with iCT's N curriculum."""
    rho: float = 2.0                # grid s_i = (i / N)^rho
    n_start: int = 10               # curriculum: N from n_start, doubling, up to n_end over train.steps
    n_end: int = 1280               # the curriculum's last N
    huber_c: float = 0.03           # pseudo-Huber constant


@dataclass
class CDConfig(CTConfig):
    """Consistency distillation: CT's grid and curriculum, and a teacher ODE step between grid points."""
    solver: str = "heun"            # teacher ODE step: euler | heun


@dataclass
class LCMConfig:
    """LCM: a fixed grid of ``num_steps`` intervals, skipping-step targets ``k = skip``, guided DDIM teacher
    (``objective.guidance``, w baked into the student)."""
    num_steps: int = 50
    skip: int = 5
    rho: float = 1.0
    huber_c: float = 0.03


@dataclass
class SCMConfig:
    """sCM (TrigFlow): proposal ``tan t = e^tau / sigma_data``, ``tau ~ N(p_mean, p_std^2)``; tangent warm-up and
    stabiliser (``normalize``: g / (||g|| + norm_c) | ``clip``: to [-1, 1])."""
    sigma_data: float = 1.0
    p_mean: float = -1.0
    p_std: float = 1.4
    warmup_steps: int = 500
    tangent: str = "normalize"
    norm_c: float = 0.1


@dataclass
class CTMConfig:
    """CTM: soft consistency matching against ``teacher_steps`` teacher ODE steps, DSM auxiliary weight,
    gamma of gamma-sampling."""
    teacher_steps: int = 2
    solver: str = "heun"
    dsm_weight: float = 1.0
    gamma: float = 0.0


@dataclass
class MeanFlowConfig:
    """MeanFlow: ``(t, r)`` two sorted uniform draws, with ``r = t`` (flow matching) on a share of samples."""
    fm_fraction: float = 0.75       # share of samples with r = t (the paper's 25% with r != t)


@dataclass
class ShortcutConfig:
    """Shortcut models: flow matching at d = 0 and self-consistency at d = 2^-j on a share of samples."""
    fraction: float = 0.25          # share of samples on self-consistency (the paper's 1/4 of the batch)
    levels: int = 7                 # d in {1/2, ..., 2^-levels}


@dataclass
class SemigroupConfig:
    """Flow-map self-distillation by the semigroup condition, anchored to the teacher on the diagonal."""
    diag_weight: float = 1.0        # weight of || F(x, t, t) - v_teacher(x, t) ||^2


@dataclass
class ProgressiveConfig:
    """Progressive distillation, one round: the student's one Euler step regresses the teacher's two
    (``objective.progressive``); round k's export is round k + 1's model.checkpoint, student_steps halved."""
    student_steps: int = 4          # N: the student's Euler steps on euler_grid(N, schedule.shift); the
                                    # teacher runs 2N
    teacher: str = "bidirectional"  # bidirectional: teacher.checkpoint | causal: the frozen copy of the generator
                                    # as it starts (model.checkpoint), block-causal as it was trained


@dataclass
class GuidedConfig(FlowLossConfig):
    """Guided distillation, stage 1: the teacher's CFG at ``objective.guidance`` (two calls) regressed into the
    generator's one conditional call; stage 2 is ``progressive`` rounds from its export."""
    w_range: list[float] = field(default_factory=lambda: [1.0, 4.0]) # [lo, hi] of the per-sample scale w of a
                                    # w-conditioned generator (model.guidance_input; the convention of
                                    # objective.guidance), drawn uniformly; without the input the scale is baked


@dataclass
class DMD2Config:
    """DMD2: DMD (no regression) + a GAN on a head over the critic's features (``objective.gan``), critic and
    discriminator updated every step, the generator every ``gen_update_every`` (two time scales)."""
    backward_simulation: bool = True  # exit-step inputs from the student's own earlier steps (the Self
                                      # Forcing rollout) | false: real clips noised to the exit step's sigma


@dataclass
class ADDConfig:
    """ADD: score distillation from the teacher + a hinge GAN whose heads read a frozen feature network (the
    critic DiT on clean clips), R1 on real clips (finite difference at ``objective.gan.r_sigma``)."""
    distill_weight: float = 2.5     # lambda of the score-distillation term (ADD's 2.5)
    r1_weight: float = 1.0e-5       # R1 weight gamma on real clips (ADD's 1e-5)
    feature_layers: list[int] = field(default_factory=list)  # blocks read by the heads (a head after block n,
                                    # 1-based); empty: every block
    backward_simulation: bool = False  # student inputs from its own earlier steps | false: real clips noised
                                       # to the exit step's sigma (ADD)


@dataclass
class LADDConfig:
    """LADD: a hinge GAN whose heads read the frozen teacher's features at a sampled noise level; no
    distillation loss. The critic must be the teacher's copy (``critic.preset: teacher``)."""
    feature_layers: list[int] = field(default_factory=list)  # as objective.add.feature_layers
    sigma_loc: float = 1.0          # discriminator noise level sigma = sigmoid(loc + scale z), z ~ N(0, 1): a
                                    # logit-normal; loc > 0 favours high noise (LADD: global-structure feedback)
    sigma_scale: float = 1.0        # scale of the logit-normal noise level
    teacher_steps: int = 0          # 0: real clips (data.videos) | n > 0: synthetic clips from the teacher's
                                    # n-step guided Euler ODE (data.prompts only)
    backward_simulation: bool = False  # as objective.add.backward_simulation


@dataclass
class GRPOConfig:
    """GRPO on few-step rollouts: ``group_size`` rollouts per prompt, group-normalised advantages, a clipped
    ratio of the sampler's Gaussian transitions and a KL to the reference (the starting generator)."""
    group_size: int = 4             # rollouts per prompt (>= 2)
    reward: str = "motion"          # motion (optical-flow motion continuity) | drift (-D of the ball world)
    jerk_weight: float = 1.0        # motion reward: mean flow magnitude - jerk_weight x mean jerk along tracks
    clip: float = 1.0e-4            # ratio clip epsilon (Flow-GRPO's 1e-4 for per-element log-densities)
    kl_weight: float = 0.04         # beta of the KL anchor to the reference (DeepSeekMath / Flow-GRPO 0.04)
    adv_clip: float = 5.0           # advantages clipped to [-adv_clip, adv_clip] (Flow-GRPO's 5)
    extended_dmd_weight: float = 0.0  # 0: GRPO alone | w > 0: every generator update adds w x the extended DMD
                                      # loss, and the critic trains as extended DMD's


@dataclass
class ObjectiveConfig:
    """``name`` picks the objective; each objective with settings of its own has its section."""
    name: str = "dmd"               # dmd | extended_dmd | sid | gan | dmd_gan | ode_init | teacher_forcing |
                                    # diffusion_forcing | flow_matching (bidirectional teacher from data)
                                    # | cd | ct | lcm (consistency, video plugins) | dmd2 | add | ladd
                                    # (adversarial) | grpo (reward) | scm | ctm (consistency) | meanflow |
                                    # shortcut | flowmap_lagrangian | flowmap_eulerian | flowmap_semigroup
                                    # (ctm and the flow maps need model.time_to) | kd | reflow (trajectory
                                    # distillation on the couplings of objective.ode_init.pairs) | progressive
                                    # | guided (progressive / guided distillation against the teacher)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    gen_update_every: int = 5       # objectives with a critic: the generator updates every n-th step
    sid: SiDConfig = field(default_factory=SiDConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    ode_init: ODEInitConfig = field(default_factory=ODEInitConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    reflow: ReflowConfig = field(default_factory=ReflowConfig)
    flow_matching: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    teacher_forcing: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)
    diffusion_forcing: FlowLossConfig = field(default_factory=FlowLossConfig)
    cd: CDConfig = field(default_factory=CDConfig)
    ct: CTConfig = field(default_factory=CTConfig)
    lcm: LCMConfig = field(default_factory=LCMConfig)
    scm: SCMConfig = field(default_factory=SCMConfig)
    ctm: CTMConfig = field(default_factory=CTMConfig)
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    flowmap_semigroup: SemigroupConfig = field(default_factory=SemigroupConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    guided: GuidedConfig = field(default_factory=GuidedConfig)
    dmd2: DMD2Config = field(default_factory=DMD2Config)
    add: ADDConfig = field(default_factory=ADDConfig)
    ladd: LADDConfig = field(default_factory=LADDConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass
class OptimConfig:
    generator_lr: float = 2e-6      # AdamW learning rate of the generator engine
    critic_lr: float = 4e-7         # AdamW learning rate of the critic engine
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999]) # AdamW betas of both engines
    weight_decay: float = 0.01      # AdamW weight decay
    grad_clip: float = 10.0         # gradient-norm clipping of every engine (set explicitly for DeepSpeed)
    ema_decay: float = 0.99         # generator EMA decay d (the export is the EMA)
    ema_start: int = 200            # generator updates before the EMA starts averaging (a plain copy until then)
    ema_warmup: bool = False        # decay of the n-th average min(ema_decay, (1 + n) / (10 + n)) (train/ema.py)
    lr_schedule: str = "constant"   # constant | cosine (vidforce/train/lr.py), over each engine's own updates
    warmup_steps: int = 0           # linear warm-up, in updates of each engine
    min_lr_ratio: float = 0.0       # cosine: the last update's LR / the base LR


LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


@dataclass
class LoRAConfig:
    """LoRA over one frozen base shared by teacher, generator and critic (models/lora.py): the teacher is the base
    with adapters off, the generator and a critic that copies the teacher are the base plus their own adapter."""
    enabled: bool = False           # off: full fine-tuning (the generator and critic are copies of their own)
    rank: int = 64                  # r of every adapter (delta W = (alpha / r) B A, B [out, r], A [r, in])
    alpha: float = 64.0             # scale numerator: delta W = (alpha / rank) B A
    dropout: float = 0.0            # dropout on the adapter's input (training only)
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # linears of each DiT block
                                    # adapted, of LORA_TARGETS (attention q/k/v/o, the FFN's two linears)


@dataclass
class TrainConfig:
    steps: int = 100                # training iterations (critic turns count every step, the generator its own)
    batch_size: int = 1             # per GPU
    grad_accum: int = 1             # micro-batches per optimizer step
    seed: int = 0                   # seeds weights, noise and data order (per rank)
    run_dir: str = "runs/default"   # checkpoints, metrics.jsonl, config.yaml, drift reports
    resume: str = "auto"            # auto | none | a checkpoint directory
    checkpoint_every: int = 50      # iterations between checkpoints (one is also written at the end and on Ctrl-C)
    keep_last: int = 3              # checkpoints kept
    log_every: int = 1              # iterations between metric lines
    precision: str = "bf16"         # bf16 | fp32
    activation_checkpointing: bool = False # recompute each DiT block in backward (memory for time)
    compile: bool = False           # torch.compile each DiT block's tensor halves (WanModel.compile_blocks)
    generator_zero_stage: int = 2   # DeepSpeed ZeRO stage of the generator engine (0-3)
    critic_zero_stage: int = 2      # DeepSpeed ZeRO stage of the critic engine (0-3)
    generator_offload_optimizer: bool = False # ZeRO-Offload: the generator's fp32 master weights, gradient partition
                                    # and AdamW moments live and step in CPU memory (needs generator_zero_stage >= 1;
                                    # DeepSpeedCPUAdam on CUDA when its op builds, else torch AdamW: train/engines.py)
    critic_offload_optimizer: bool = False # the same for the critic engine (needs critic_zero_stage >= 1)
    teacher_zero3: bool = False     # partition the frozen teacher (ZeRO-3) instead of replicating it
    dist_timeout_s: int = 600       # a rank silent this long (no loop progress) ends the job, named (watchdog.py)
    device: str = "auto"            # auto | cpu | cuda
    sequence_parallel: int = 1      # Ulysses degree: ranks that split each DiT forward by tokens (one micro-batch)


@dataclass
class DataConfig:
    prompts: str = ""               # txt / jsonl of prompts (rollout objectives)
    videos: str = ""                # directory or manifest of mp4 + captions (data objectives, GAN)
    world: str = ""                 # a data.balls world spec JSON: fresh rendered scenes instead of data.videos
    world_workers: int = 0          # processes simulating the next data.world micro-batches ahead (0: in the loop)
    latent_height: int = 8          # latent frame height (pixels / codec spatial factor)
    latent_width: int = 8           # latent frame width
    fps: float = 16.0               # pixel frame rate of generated / training videos
    negative_prompt: str = ""       # the unconditional prompt of CFG (training dropout and guided scores)
    cache_clips: bool = False       # keep decoded clips in memory (small datasets: the mini world)
    clip_stride: int = 0            # pixel frames between clip starts (at data.fps); 0: the clip length, no overlap


@dataclass
class TextConfig:
    encoder: str = "tiny"           # tiny | umt5 | cache
    path: str = ""                  # umT5 directory or embedding-cache file


@dataclass
class CodecConfig:
    kind: str = "pixel"             # pixel | wan_vae | taehv (the light TAEHV decoder in WanVAE's latent space)
    path: str = ""                  # Wan2.1_VAE.pth for wan_vae, taew2_1.pth for taehv
    spatial_factor: int = 2         # PixelCodec space-to-depth factor
    decode_buffers: bool = False    # wan_vae: stream decoding keeps each causal conv's past frames in a preallocated
                                    # padded buffer (no concatenation / padding copies; bit-identical)
    channels_last: bool = False     # wan_vae: the decoder's convolutions in NDHWC (cuDNN's fast layout; equal to
                                    # fp32 round-off)


@dataclass
class StreamConfig:
    """Speed levers of streaming inference (``vidforce generate`` / ``serve``; tools/bench_stream.py measures
    each); all keep the frames but ``fp8``."""
    fused_refresh: bool = False     # run each chunk's clean-context refresh inside the next chunk's first forward
                                    # (one forward fewer per chunk; sampling.stream_step)
    cuda_graphs: bool = False       # replay the per-chunk DiT forward from CUDA graphs (models/graphs.py; needs a
                                    # rolling causal.window)
    fp8: str = "off"                # off | tensor | row: FP8 linear layers in the DiT blocks (torch._scaled_mm,
                                    # per-tensor or per-row scales; changes the frames slightly: models/fp8.py)
    overlap_decode: bool = False    # decode chunk c on a second CUDA stream while the DiT of chunk c + 1 runs (one
                                    # thread; the first output is decoded at once). Each later chunk reaches the
                                    # consumer after the next chunk started, so a prompt requested between chunks
                                    # (--prompts-live) lands one chunk later; scheduled switches land where they
                                    # would (streaming.Streamer); vidforce serve names the frame it lands at


@dataclass
class LoggingConfig:
    wandb: bool = True              # log to wandb (metrics.jsonl is always written)
    wandb_mode: str = "offline"     # offline | online | disabled
    project: str = "vidforce"       # wandb project
    progress: bool = True           # progress bars (shown when stderr is a terminal)


@dataclass
class DriftConfig:
    every: int = 0                  # training hook period in steps (0 = off)
    horizon_multiple: int = 10      # roll out this many teacher horizons
    prompts: list[str] = field(default_factory=list) # prompts of the training-time drift rollouts
    seeds: list[int] = field(default_factory=lambda: [0]) # noise seeds of the drift rollouts (each prompt x seed)
    window_seconds: float = 2.0     # drift metric window length
    ema: bool = True                # roll out the generator EMA (false: the raw weights)


@dataclass
class VidforceConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    critic: ModelConfig = field(default_factory=lambda: ModelConfig(preset="teacher"))
    causal: CausalConfig = field(default_factory=CausalConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


CHOICES: dict[str, tuple] = {
    "causal.rope_mode": ("absolute", "relative"),
    "causal.attention": ("auto", "math", "sdpa", "cudnn", "flash", "efficient", "flash_attn", "jvp"),
    "causal.full_sequence": ("loop", "flex", "dense"),
    "rollout.exit_step": ("random", "last"),
    "rollout.long_sampling": ("fixed", "uniform"),
    "rollout.window_sampling": ("uniform", "beta"),
    "objective.name": ("dmd", "sid", "gan", "dmd_gan", "ode_init", "teacher_forcing", "diffusion_forcing",
                       "extended_dmd", "flow_matching", "cd", "ct", "lcm", "scm", "ctm", "meanflow", "shortcut",
                       "flowmap_lagrangian", "flowmap_eulerian", "flowmap_semigroup", "dmd2", "add", "ladd",
                       "grpo", "kd", "reflow", "progressive", "guided"),
    "objective.grpo.reward": ("motion", "drift"),
    "objective.cd.solver": ("euler", "heun"),
    "objective.scm.tangent": ("normalize", "clip"),
    "objective.ctm.solver": ("euler", "heun"),
    "objective.guidance.convention": ("uncond", "cond"),
    "objective.flow_matching.weighting": ("uniform", "wan"),
    "objective.teacher_forcing.weighting": ("uniform", "wan"),
    "objective.diffusion_forcing.weighting": ("uniform", "wan"),
    "objective.reflow.weighting": ("uniform", "wan"),
    "objective.guided.weighting": ("uniform", "wan"),
    "objective.progressive.teacher": ("bidirectional", "causal"),
    "schedule.time_sampling": ("range", "clamp"),
    "rollout.cache_grad": ("detach", "exit_step"),
    "model.checkpoint_key": ("auto", "generator", "generator_ema", "critic"),
    "teacher.checkpoint_key": ("auto", "generator", "generator_ema", "critic"),
    "critic.checkpoint_key": ("auto", "generator", "generator_ema", "critic"),
    "train.precision": ("bf16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "text.encoder": ("tiny", "umt5", "cache"),
    "codec.kind": ("pixel", "wan_vae", "taehv"),
    "stream.fp8": ("off", "tensor", "row"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "optim.lr_schedule": ("constant", "cosine"),
}
POSITIVE = ("objective.gan.r_sigma", "causal.frames_per_chunk", "rollout.num_frames", "objective.gen_update_every",
            "objective.ctm.teacher_steps", "objective.shortcut.levels", "objective.scm.sigma_data", "objective.scm.norm_c",
            "train.steps", "train.batch_size", "train.grad_accum", "train.checkpoint_every", "train.keep_last", "train.log_every",
            "data.latent_height", "data.latent_width", "data.fps", "codec.spatial_factor", "train.dist_timeout_s",
            "drift.window_seconds", "drift.horizon_multiple", "schedule.shift", "objective.ladd.sigma_scale",
            "objective.grpo.clip", "objective.grpo.adv_clip", "lora.rank", "lora.alpha",
            "objective.progressive.student_steps")
NON_NEGATIVE = ("causal.window", "causal.sink", "rollout.grad_chunks", "rollout.long_frames", "optim.generator_lr",
                "objective.scm.warmup_steps", "objective.ctm.dsm_weight", "objective.flowmap_semigroup.diag_weight",
                "optim.critic_lr", "optim.weight_decay", "optim.grad_clip", "optim.ema_start",
                "optim.warmup_steps", "data.clip_stride", "data.world_workers", "drift.every",
                "objective.gan.r1_weight", "objective.gan.r2_weight", "objective.gan.weight", "schedule.context_noise",
                "objective.teacher_forcing.context_noise", "objective.add.distill_weight", "objective.add.r1_weight",
                "objective.ladd.teacher_steps", "objective.grpo.jerk_weight", "objective.grpo.kl_weight",
                "objective.grpo.extended_dmd_weight")


def _get(cfg: VidforceConfig, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _validate_model(m: ModelConfig, name: str) -> None:
    if name == "critic" and m.preset == "teacher":
        return
    if m.preset not in MODEL_PRESETS and m.preset != "custom":
        raise ValueError(f"{name}.preset must be one of {sorted(MODEL_PRESETS)} or 'custom', got {m.preset!r}")
    if m.dim % m.num_heads:
        raise ValueError(f"{name}.dim ({m.dim}) must be divisible by {name}.num_heads ({m.num_heads})")
    if (m.dim // m.num_heads) % 2:
        raise ValueError(f"{name}: head dim {m.dim // m.num_heads} must be even for RoPE")
    if len(m.patch_size) != 3 or min(m.patch_size) < 1:
        raise ValueError(f"{name}.patch_size must be 3 positive ints, got {list(m.patch_size)}")
    for f in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim", "text_len"):
        if getattr(m, f) < 1:
            raise ValueError(f"{name}.{f} must be >= 1, got {getattr(m, f)}")


def _validate_lora(cfg: VidforceConfig) -> None:
    """LoRA values; with ``lora.enabled`` the generator and teacher must be one model (one shared base)."""
    lo = cfg.lora
    if not 0 <= lo.dropout < 1:
        raise ValueError(f"lora.dropout must be in [0, 1), got {lo.dropout}")
    bad = [t for t in lo.target_modules if t not in LORA_TARGETS]
    if bad or not lo.target_modules:
        raise ValueError(f"lora.target_modules must be a non-empty list of {LORA_TARGETS}, "
                         f"got {list(lo.target_modules)}")
    if not lo.enabled:
        return
    if cfg.train.teacher_zero3:
        raise ValueError("train.teacher_zero3 partitions a teacher of its own: with lora.enabled the teacher is the "
                         "shared base (set train.teacher_zero3=false)")
    stages = ("train.generator_zero_stage",) + (("train.critic_zero_stage",) if cfg.critic.preset == "teacher" else ())
    for key in stages:
        if _get(cfg, key) == 3:
            raise ValueError(f"{key} is 3, but ZeRO-3 gathers parameters in their own module's forward, which an "
                             "adapter (hooks on the shared base) never runs: use 0, 1 or 2 with lora.enabled")
    for f in (f.name for f in dataclasses.fields(ModelConfig)):
        if f in ("preset", "checkpoint", "checkpoint_key"):
            continue
        if _get(cfg, f"model.{f}") != _get(cfg, f"teacher.{f}"):
            raise ValueError(f"teacher.{f} ({_get(cfg, f'teacher.{f}')!r}) must equal model.{f} "
                             f"({_get(cfg, f'model.{f}')!r}): with lora.enabled they are one shared base")
    if cfg.model.checkpoint and cfg.teacher.checkpoint and cfg.model.checkpoint != cfg.teacher.checkpoint:
        raise ValueError(f"model.checkpoint ({cfg.model.checkpoint}) must be empty or equal teacher.checkpoint "
                         f"({cfg.teacher.checkpoint}): with lora.enabled they are one shared base")


def _validate_sequence_parallel(cfg: VidforceConfig) -> None:
    """``train.sequence_parallel`` must divide every trained or scoring DiT's heads and tokens per frame."""
    sp = cfg.train.sequence_parallel
    if sp < 1:
        raise ValueError(f"train.sequence_parallel must be >= 1, got {sp}")
    for name in ("model", "teacher", "critic"):
        m = _get(cfg, name)
        if name == "critic" and m.preset == "teacher":
            continue
        tokens = (cfg.data.latent_height // m.patch_size[1]) * (cfg.data.latent_width // m.patch_size[2])
        if m.num_heads % sp or tokens % sp:
            raise ValueError(f"train.sequence_parallel ({sp}) must divide {name}.num_heads ({m.num_heads}) and the "
                             f"tokens per frame ({tokens})")


def validate(cfg: VidforceConfig) -> VidforceConfig:
    """Check values; raise ``ValueError`` naming the field."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {_get(cfg, key)!r}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ValueError(f"{key} must be > 0, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {_get(cfg, key)}")
    _validate_model(cfg.model, "model")
    _validate_model(cfg.teacher, "teacher")
    _validate_model(cfg.critic, "critic")
    if not 0 <= cfg.objective.flow_matching.cfg_dropout <= 1:
        raise ValueError(f"objective.flow_matching.cfg_dropout must be in [0, 1], got "
                         f"{cfg.objective.flow_matching.cfg_dropout}")
    for key in ("objective.meanflow.fm_fraction", "objective.shortcut.fraction", "objective.ctm.gamma"):
        if not 0 <= _get(cfg, key) <= 1:
            raise ValueError(f"{key} must be in [0, 1], got {_get(cfg, key)}")
    w_range = cfg.objective.guided.w_range
    if len(w_range) != 2 or not w_range[0] <= w_range[1]:
        raise ValueError(f"objective.guided.w_range must be [lo, hi] with lo <= hi, got {list(w_range)}")
    if cfg.objective.grpo.group_size < 2:
        raise ValueError(f"objective.grpo.group_size must be >= 2 (advantages are normalised within a group), "
                         f"got {cfg.objective.grpo.group_size}")
    for key in ("objective.add.feature_layers", "objective.ladd.feature_layers"):
        if any(n < 1 for n in _get(cfg, key)):
            raise ValueError(f"{key} counts blocks from 1, got {list(_get(cfg, key))}")
    if cfg.rollout.cache_grad == "exit_step" and cfg.train.activation_checkpointing:
        raise ValueError("rollout.cache_grad=exit_step keeps autograd history in the KV cache, which activation "
                         "recomputation would rewrite: set train.activation_checkpointing=false")
    c, r, s = cfg.causal, cfg.rollout, cfg.schedule
    if r.num_frames % c.frames_per_chunk:
        raise ValueError(f"rollout.num_frames ({r.num_frames}) must be a multiple of causal.frames_per_chunk "
                         f"({c.frames_per_chunk})")
    if r.long_frames and (r.long_frames < r.num_frames or r.long_frames % c.frames_per_chunk):
        raise ValueError(f"rollout.long_frames ({r.long_frames}) must be >= rollout.num_frames and a multiple of "
                         f"causal.frames_per_chunk")
    if c.window and c.window < c.sink + c.frames_per_chunk:
        raise ValueError(f"causal.window ({c.window}) must be >= causal.sink + causal.frames_per_chunk "
                         f"({c.sink + c.frames_per_chunk})")
    if c.sink and not c.window:
        raise ValueError("causal.sink needs a rolling causal.window > 0")
    if cfg.stream.cuda_graphs and not c.window:
        raise ValueError("stream.cuda_graphs needs a rolling causal.window > 0 (with the whole video attended, every "
                         "chunk has a shape of its own)")
    if r.cuda_graphs and (not c.window or r.cache_grad != "detach" or cfg.train.generator_zero_stage == 3):
        raise ValueError("rollout.cuda_graphs needs a rolling causal.window > 0, rollout.cache_grad=detach and "
                         "train.generator_zero_stage < 3 (graphs read fixed cache and weight buffers)")
    if not s.denoising_steps or any(not 0 < t <= 1000 for t in s.denoising_steps):
        raise ValueError(f"schedule.denoising_steps must be non-empty values in (0, 1000], "
                         f"got {list(s.denoising_steps)}")
    if list(s.denoising_steps) != sorted(s.denoising_steps, reverse=True):
        raise ValueError("schedule.denoising_steps must be decreasing")
    if not 0 <= s.min_step < s.max_step <= 1:
        raise ValueError(f"schedule.min_step/max_step must satisfy 0 <= min < max <= 1, got {s.min_step}, {s.max_step}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ValueError(f"optim.betas must be two values in [0, 1), got {list(cfg.optim.betas)}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise ValueError(f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}")
    for role in ("generator", "critic"):
        stage = _get(cfg, f"train.{role}_zero_stage")
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"train.{role}_zero_stage must be 0, 1, 2 or 3, got {stage}")
        if _get(cfg, f"train.{role}_offload_optimizer") and stage == 0:
            raise ValueError(f"train.{role}_offload_optimizer needs train.{role}_zero_stage >= 1 (ZeRO-Offload moves "
                             "the ZeRO optimizer's partition to the CPU), got 0")
    _validate_lora(cfg)
    _validate_sequence_parallel(cfg)
    for name in ("teacher", "critic"):
        if cfg.model.text_dim != _get(cfg, f"{name}.text_dim"):
            raise ValueError(f"model.text_dim ({cfg.model.text_dim}) must equal {name}.text_dim "
                             f"({_get(cfg, f'{name}.text_dim')})")
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """A YAML file with its ``inherit:`` chain resolved (parents first); unreadable YAML raises ``ValueError``
    naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"config inherit cycle through {path}")
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (UTF-8) YAML file") from None
    if not isinstance(data, DictConfig):
        raise ValueError(f"{path}: a config is a mapping of sections (model:, train:, ...), got a list")
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    base = _read_yaml((path.parent / str(parent)), seen + (path.resolve(),))
    return OmegaConf.merge(base, data)


def _with_presets(layers: list[Any]) -> list[Any]:
    """Insert the model presets named by the layers (last wins) right after the schema defaults.

    An unnamed teacher has the generator's architecture. The critic's preset ``teacher`` (the default) makes
    it the teacher's copy (architecture and weights: :func:`critic_copies_teacher`), so no other critic
    key may be set with it."""
    merged = OmegaConf.merge(*layers) if layers else OmegaConf.create({})
    model = OmegaConf.select(merged, "model.preset", default=None) or "tiny"
    teacher = OmegaConf.select(merged, "teacher.preset", default=None)
    critic = OmegaConf.select(merged, "critic", default=None) or {}
    presets: dict[str, Any] = {}
    if model in MODEL_PRESETS:
        presets["model"] = MODEL_PRESETS[model]
    if teacher is None:
        presets["teacher"] = dict(MODEL_PRESETS.get(model, {}), preset=model)
    elif teacher in MODEL_PRESETS:
        presets["teacher"] = MODEL_PRESETS[teacher]
    preset = critic.get("preset", "teacher")
    if preset == "teacher" and set(critic) - {"preset"}:
        raise ValueError(f"critic.{sorted(set(critic) - {'preset'})[0]} is set but critic.preset is 'teacher' "
                         "(a copy of the teacher): name a preset or 'custom' for a critic of its own")
    if preset in MODEL_PRESETS:
        presets["critic"] = MODEL_PRESETS[preset]
    return [OmegaConf.create(presets)] + layers


def critic_copies_teacher(cfg: "VidforceConfig") -> bool:
    """Whether the critic is a copy of the teacher (``critic.preset: teacher``) rather than its own model."""
    return cfg.critic.preset == "teacher"


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> VidforceConfig:
    """Load and validate a config: schema <- presets <- YAML (with ``inherit``) <- ``key=value`` overrides."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
    try:
        layers = [_read_yaml(Path(path))] if path else []
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(OmegaConf.structured(VidforceConfig), *_with_presets(layers))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ValueError(f"bad config key {key!r}: {str(err).splitlines()[0]}") from None
    if critic_copies_teacher(cfg):
        cfg.critic = dataclasses.replace(cfg.teacher, preset="teacher")
    return validate(cfg)


def to_yaml(cfg: VidforceConfig) -> str:
    """The resolved config as YAML (``--dry-run``; a critic that copies the teacher is written as just that)."""
    data = OmegaConf.structured(cfg)
    if critic_copies_teacher(cfg):
        data = OmegaConf.to_container(data)
        data["critic"] = {"preset": "teacher"}
    return OmegaConf.to_yaml(data)


def arch_of(m: ModelConfig):
    """The model architecture (``models.wan.WanArch``) of a model config."""
    from vidforce.models.wan import WanArch  # noqa: PLC0415 (keep config import-light)
    return WanArch(dim=m.dim, ffn_dim=m.ffn_dim, num_heads=m.num_heads, num_layers=m.num_layers,
                   text_dim=m.text_dim, freq_dim=m.freq_dim, in_dim=m.in_dim, out_dim=m.out_dim,
                   patch_size=tuple(m.patch_size), text_len=m.text_len, cross_attn_norm=m.cross_attn_norm,
                   eps=m.eps, rope_max_len=m.rope_max_len, time_to=m.time_to, guidance_input=m.guidance_input)
