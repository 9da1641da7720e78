"""The two-phase SFDFuse training loop: ``main()`` -> ``train_one_epoch()`` -> ``evaluate()``.

The recipe is CDDFuse's (Zhao et al., CVPR 2023) as SFDFuse (``zxp771/SFDFuse``, ``train.py``)
uses it: phase I trains encoder and decoder to reconstruct both modalities with a decomposition
loss, phase II trains the whole network (encoder, decoder and both fusion layers) to fuse.
One Adam optimiser holds one parameter group per module group (encoder, decoder, base fusion,
detail fusion); gradient norms are clipped per group; each group's learning rate follows a
StepLR schedule with a floor. Differences from the public script, deliberate:

* phase I reconstructs the infrared image from its own detail features. The public code decodes
  ``(I_base, V_detail)`` for the infrared reconstruction, which contradicts the paper and the
  decomposition it trains for (see ``training/README.md``);
* the fusion layers' schedule starts when phase II starts (as there), expressed as one
  ``LambdaLR`` with a rule per group instead of four optimisers and four schedulers;
* both modalities go through the encoder (and in phase I the decoder) as one batch;
* a few patches (``val_patches``) are held out to report losses at epoch ends.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m sfdfuse_core train ...``; the world is
read from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and DistributedDataParallel is used; only
rank 0 logs and writes files.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Sampler, Subset

from sfdfuse_core.model import SFDFuse, build_model
from sfdfuse_core.train.checkpoint import (FORMAT_VERSION, CheckpointError, load_latest,
                                           previous_path, rng_state, save_checkpoint,
                                           set_rng_state)
from sfdfuse_core.train.config import (RUNTIME_KEYS, ConfigError, TrainConfig, changed_keys,
                                       config_to_dict, save_config)
from sfdfuse_core.train.losses import FusionLoss, ReconstructionLoss

__all__ = ['MODULE_GROUPS', 'TrainingStep', 'EpochSampler', 'RunResult', 'build_optimizer',
           'build_scheduler', 'augment_pairs', 'train_one_epoch', 'evaluate', 'main']

#: Parameter groups of the optimiser: group name -> child modules of :class:`SFDFuse`.
#: Gradient clipping and learning-rate schedules work per group.
MODULE_GROUPS = {
    'encoder': ('encoder',),
    'decoder': ('decoder',),
    'base_fusion': ('base_fusion',),
    'detail_fusion': ('detail_fusion',),
}
#: Groups trained in each phase (the public code steps all four optimisers in phase II).
PHASE_GROUPS = {1: ('encoder', 'decoder'),
                2: ('encoder', 'decoder', 'base_fusion', 'detail_fusion')}
#: Groups whose StepLR schedule starts with phase II.
PHASE2_SCHEDULED = ('base_fusion', 'detail_fusion')

LAST = 'last.pt'


# ----------------------------------------------------------------------------------------------
# the step as one module (so DDP and torch.compile see the whole computation)
# ----------------------------------------------------------------------------------------------

class TrainingStep(nn.Module):
    """Network plus loss of one phase: ``forward(vi, ir)`` returns the loss terms.

    :param model: the network.
    :param phase: 1 (reconstruction) or 2 (fusion).
    :param recon_loss: the phase-I loss.
    :param fusion_loss: the phase-II loss.
    :param autocast: ``(device_type, enabled)`` of bfloat16 autocast.
    """

    def __init__(self, model: SFDFuse, phase: int, recon_loss: ReconstructionLoss,
                 fusion_loss: FusionLoss, autocast: tuple = ('cpu', False)) -> None:
        """Hold the pieces; see the class docstring."""
        super().__init__()
        if phase not in (1, 2):
            raise ValueError(f'phase must be 1 or 2, got {phase!r}')
        self.model = model
        self.phase = phase
        self.recon_loss = recon_loss
        self.fusion_loss = fusion_loss
        self.autocast = autocast

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run the network and the phase's loss.

        :param vi: visible luma ``(B, 1, H, W)`` in ``[0, 1]``.
        :param ir: infrared ``(B, 1, H, W)`` in ``[0, 1]``.
        :return: loss terms (float32 scalars); ``'loss'`` is what is minimised.
        """
        batch = vi.shape[0]
        device_type, enabled = self.autocast
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
            both = torch.cat([vi, ir], dim=0)  # (2B, 1, H, W)
            base, detail = self.model.encode(both)  # each (2B, dim, H, W)
            if self.phase == 1:
                # Each image is decoded from its OWN base and detail features. The public
                # CDDFuse/SFDFuse train.py decodes the infrared image from (I_base, V_detail),
                # which we take to be a bug (see training/README.md).
                recon = self.model.decode(both, base, detail)  # (2B, 1, H, W)
            else:
                base_f, detail_f = self.model.fuse_features(base[:batch], detail[:batch],
                                                            base[batch:], detail[batch:])
                fused = self.model.decode(vi, base_f, detail_f)  # (B, 1, H, W)
        base, detail = base.float(), detail.float()
        if self.phase == 1:
            recon = recon.float()
            return self.recon_loss(vi, ir, recon[:batch], recon[batch:], base[:batch],
                                   detail[:batch], base[batch:], detail[batch:])
        return self.fusion_loss(vi, ir, fused.float(), base[:batch], detail[:batch],
                                base[batch:], detail[batch:])


# ----------------------------------------------------------------------------------------------
# data order that a resumed run reproduces
# ----------------------------------------------------------------------------------------------

class EpochSampler(Sampler):
    """Seeded per-epoch shuffle, sharded over ranks, that can start part-way through an epoch.

    The order of epoch ``e`` is ``randperm(n)`` drawn from ``seed + e`` (independent of
    anything else), padded to a multiple of ``world`` and dealt out like ``DistributedSampler``.

    :param n: data set size.
    :param seed: base seed.
    :param rank: this process's rank.
    :param world: number of processes.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        """See the class docstring."""
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch and how many of this rank's samples to skip (already trained).

        :param epoch: epoch index.
        :param skip: samples of this rank's share to leave out from the start.
        """
        self.epoch, self.skip = epoch, skip

    def per_rank(self) -> int:
        """:return: samples per rank in an epoch (after padding)."""
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices of the current epoch from ``skip`` on."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank() * self.world
        order += order[:total - self.n]
        return iter(order[self.rank:total:self.world][self.skip:])

    def __len__(self) -> int:
        """:return: indices yielded from ``skip`` on."""
        return max(0, self.per_rank() - self.skip)


# ----------------------------------------------------------------------------------------------
# optimiser and schedule
# ----------------------------------------------------------------------------------------------

def _group_modules(model: SFDFuse, name: str) -> List[nn.Module]:
    return [getattr(model, child) for child in MODULE_GROUPS[name]]


def build_optimizer(model: SFDFuse, config: TrainConfig) -> torch.optim.Adam:
    """One Adam optimiser with one named parameter group per :data:`MODULE_GROUPS` entry.

    :param model: the network.
    :param config: the run configuration.
    :return: the optimiser.
    """
    groups = []
    for name in MODULE_GROUPS:
        params = [p for m in _group_modules(model, name) for p in m.parameters()]
        groups.append({'params': params, 'name': name})
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(epoch: int, group: str, config: TrainConfig) -> float:
    """Learning-rate factor of a group in an epoch: StepLR from its start, floored.

    Encoder and decoder decay from epoch 0; the fusion layers from the first phase-II epoch.

    :param epoch: epoch index over both phases.
    :param group: a :data:`MODULE_GROUPS` name.
    :param config: the run configuration.
    :return: multiplier of ``config.lr``.
    """
    start = config.phase1_epochs if group in PHASE2_SCHEDULED else 0
    decays = max(0, epoch - start) // config.lr_step
    return max(config.lr_gamma ** decays, config.lr_min / config.lr)


class _GroupFactor:
    """Picklable ``epoch -> factor`` rule of one group (for ``LambdaLR``)."""

    def __init__(self, group: str, config: TrainConfig) -> None:
        self.group, self.config = group, config

    def __call__(self, epoch: int) -> float:
        return lr_factor(epoch, self.group, self.config)


def build_scheduler(optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Build a ``LambdaLR`` applying :func:`lr_factor` to each group; step it once per epoch.

    :param optimizer: from :func:`build_optimizer`.
    :param config: the run configuration.
    :return: the scheduler.
    """
    rules = [_GroupFactor(g['name'], config) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rules)


def _scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> Dict[str, Any]:
    state = scheduler.state_dict()
    state['lr_lambdas'] = [None] * len(state.get('lr_lambdas', []))  # rebuilt from the config
    return state


def clip_groups(optimizer: torch.optim.Optimizer, max_norm: float) -> Dict[str, float]:
    """Clip the gradient norm of each parameter group on its own.

    :param optimizer: the optimiser whose groups are named.
    :param max_norm: the norm limit (0: no clipping, norms still measured).
    :return: ``{group name: norm before clipping}`` for groups that have gradients.
    """
    norms = {}
    for group in optimizer.param_groups:
        params = [p for p in group['params'] if p.grad is not None]
        if not params:
            continue
        limit = max_norm if max_norm > 0 else float('inf')
        norms[group['name']] = float(nn.utils.clip_grad_norm_(params, limit))
    return norms


# ----------------------------------------------------------------------------------------------
# run state
# ----------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Run:
    """Everything the loop functions share (no globals)."""

    config: TrainConfig
    model: SFDFuse
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.LambdaLR
    recon_loss: ReconstructionLoss
    fusion_loss: FusionLoss
    device: torch.device
    dist: _Dist
    run_dir: Path
    epoch: int = 0
    batch: int = 0
    step: int = 0
    finished: bool = False
    metrics: Dict[str, Any] = field(default_factory=lambda: {
        'steps': [], 'epochs': [], 'running': {}, 'running_count': 0})
    writer: Any = None
    step_fn: Optional[nn.Module] = None
    step_phase: int = 0
    on_step: Optional[Callable[['_Run'], None]] = None

    @property
    def total_epochs(self) -> int:
        return self.config.phase1_epochs + self.config.phase2_epochs

    def phase_of(self, epoch: int) -> int:
        return 1 if epoch < self.config.phase1_epochs else 2

    def autocast(self) -> tuple:
        return (self.device.type, self.config.bf16 and self.device.type == 'cuda')


@dataclass
class RunResult:
    """What :func:`main` did.

    :param run_dir: the run folder.
    :param finished: whether the whole schedule is done.
    :param step: optimiser steps done.
    :param epoch: epoch to continue at.
    :param metrics: loss history.
    :param final_weights: ``final.safetensors`` when written.
    """

    run_dir: Path
    finished: bool
    step: int
    epoch: int
    metrics: Dict[str, Any]
    final_weights: Optional[Path] = None


def _checkpoint(run: _Run) -> Dict[str, Any]:
    return {
        'model': {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        'config': run.model.config.to_dict(),
        'network': run.config.network,
        'train_config': config_to_dict(run.config),
        'optimizer': run.optimizer.state_dict(),
        'scheduler': _scheduler_state(run.scheduler),
        'epoch': run.epoch,
        'batch': run.batch,
        'step': run.step,
        'phase': run.phase_of(min(run.epoch, run.total_epochs - 1)),
        'metrics': run.metrics,
        'rng': rng_state(),
        'finished': run.finished,
        'format_version': FORMAT_VERSION,
    }


def _save(run: _Run, extra_names: Sequence[str] = ()) -> None:
    """Save ``last.pt`` (keeping the previous one as ``last.prev.pt``) and extra copies."""
    if not run.dist.main:
        return
    state = _checkpoint(run)
    save_checkpoint(state, run.run_dir / LAST, keep_previous=True)
    for name in extra_names:
        save_checkpoint(state, run.run_dir / name)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def _prepare_step(run: _Run, phase: int) -> nn.Module:
    """Return the (possibly DDP-wrapped, compiled) training step of a phase, built once."""
    if run.step_fn is not None and run.step_phase == phase:
        return run.step_fn
    trained = PHASE_GROUPS[phase]
    for name in MODULE_GROUPS:
        for module in _group_modules(run.model, name):
            module.requires_grad_(name in trained)
    step: nn.Module = TrainingStep(run.model, phase, run.recon_loss, run.fusion_loss,
                                   run.autocast())
    if run.dist.world > 1:
        ids = [run.device.index] if run.device.type == 'cuda' else None
        step = nn.parallel.DistributedDataParallel(step, device_ids=ids)
    if run.config.compile:
        step = torch.compile(step)
    run.step_fn, run.step_phase = step, phase
    return step


def _to_device(x: torch.Tensor, run: _Run) -> torch.Tensor:
    x = x.to(run.device, non_blocking=True)
    if run.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_pairs(vi: torch.Tensor, ir: torch.Tensor, flip: bool, gamma: float,
                  seed: int, exposure: Optional[Tuple[float, float, float]] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random flips (shared by both images of a pair) and exposure changes (per image).

    Drawn from a generator seeded with ``seed`` alone, so a resumed run repeats them.

    :param vi: visible patches ``(B, C, H, W)`` in ``[0, 1]``.
    :param ir: infrared patches, same shape.
    :param flip: flip each pair left-right and up-down, each with probability 1/2.
    :param gamma: each patch becomes ``x ** exp(u)``, ``u`` uniform in ``[-gamma, gamma]``.
    :param seed: seed of this batch's draws.
    :param exposure: ``(probability, low, high)``: with the probability (per patch and
        modality) a patch becomes ``x ** g``, ``g`` bringing its mean to a level drawn
        uniformly in ``[low, high]``, ``g`` kept in ``[1/4, 4]`` (None or probability 0: off).
    :return: ``(vi, ir)`` (the inputs themselves when nothing is enabled).
    """
    chance, low, high = exposure or (0.0, 0.0, 0.0)
    if not flip and not gamma and not chance:
        return vi, ir
    gen = torch.Generator()
    gen.manual_seed(seed)
    batch = vi.shape[0]
    draws = torch.rand(4, batch, generator=gen)  # left-right, up-down, vi exponent, ir exponent
    shape = (batch, 1, 1, 1)
    if flip:
        for row, dim in ((0, 3), (1, 2)):
            chosen = (draws[row] < 0.5).view(shape).to(vi.device)
            vi = torch.where(chosen, vi.flip(dim), vi)
            ir = torch.where(chosen, ir.flip(dim), ir)
    if gamma:
        exponents = torch.exp((2.0 * draws[2:] - 1.0) * gamma).to(vi.device, vi.dtype)
        vi = vi.clamp(0.0, 1.0).pow(exponents[0].view(shape))
        ir = ir.clamp(0.0, 1.0).pow(exponents[1].view(shape))
    if chance:
        # drawn after the draws above, so that runs without it repeat those exactly
        more = torch.rand(4, batch, generator=gen).to(vi.device)  # vi/ir: apply?, vi/ir: level
        vi = _expose(vi, more[0] < chance, low + (high - low) * more[2], shape)
        ir = _expose(ir, more[1] < chance, low + (high - low) * more[3], shape)
    return vi, ir


def _expose(x: torch.Tensor, chosen: torch.Tensor, level: torch.Tensor,
            shape: Tuple[int, ...]) -> torch.Tensor:
    """Raise each chosen patch of ``x`` to the power that moves its mean to ``level``."""
    x = x.clamp(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3)).clamp(1e-3, 1.0 - 1e-3)
    exponent = (torch.log(level) / torch.log(mean)).clamp(0.25, 4.0)
    exponent = torch.where(chosen, exponent, torch.ones_like(exponent))
    return x.pow(exponent.to(x.dtype).view(shape))


def train_one_epoch(run: _Run, loader: DataLoader, steps: int) -> Dict[str, float]:
    """Train from ``run.batch`` to the end of epoch ``run.epoch`` (``steps`` batches in all).

    Saves ``last.pt`` every ``save_every_steps`` steps and stops early (returning ``{}``) once
    ``stop_after_steps`` steps are done.

    :param run: the run state (advanced in place).
    :param loader: batches of ``(vi, ir)`` starting at batch ``run.batch`` of the epoch.
    :param steps: batches in the whole epoch.
    :return: mean loss terms of the epoch (including batches done before a resume).
    """
    config = run.config
    phase = run.phase_of(run.epoch)
    step_fn = _prepare_step(run, phase)
    run.model.train()
    bar = None
    if config.progress and run.dist.main:
        from sfdfuse_core.progress import progress  # a bar on a terminal, lines in a log
        bar = progress(total=steps, initial=run.batch, leave=False, unit='step',
                       desc=f'phase {phase} epoch {run.epoch + 1}/{run.total_epochs}')
    running = run.metrics['running']
    try:
        for vi, ir in loader:
            if run.batch >= steps:
                break
            vi, ir = _to_device(vi, run), _to_device(ir, run)
            vi, ir = augment_pairs(vi, ir, config.augment_flip, config.augment_gamma,
                                   seed=config.seed * 1_000_003 + run.step,
                                   exposure=(config.augment_exposure,
                                             config.augment_exposure_low,
                                             config.augment_exposure_high))
            run.optimizer.zero_grad(set_to_none=True)
            terms = step_fn(vi, ir)
            terms['loss'].backward()
            norms = clip_groups(run.optimizer, config.clip_grad_norm)
            run.optimizer.step()
            run.step += 1
            run.batch += 1
            values = {k: float(v.detach()) for k, v in terms.items()}
            if not math.isfinite(values['loss']):
                raise FloatingPointError(f'loss is {values["loss"]} at step {run.step} '
                                         f'(epoch {run.epoch}, phase {phase}): {values}')
            for key, value in values.items():
                running[key] = running.get(key, 0.0) + value
            run.metrics['running_count'] += 1
            if run.step % config.log_every == 0 and run.dist.main:
                _log_step(run, phase, values, norms)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{values["loss"]:.4f}')
            if run.on_step is not None:
                run.on_step(run)
            budget_hit = 0 < config.stop_after_steps <= run.step
            if run.batch < steps and (budget_hit or (
                    config.save_every_steps and run.step % config.save_every_steps == 0)):
                _save(run)
            if budget_hit and run.batch < steps:
                return {}
    finally:
        if bar is not None:
            bar.close()
    count = max(1, run.metrics['running_count'])
    return {k: v / count for k, v in running.items()}


@torch.no_grad()
def evaluate(run: _Run, loader: DataLoader, phase: int) -> Dict[str, float]:
    """Mean loss terms of a phase on held-out patches (network in eval mode, no randomness).

    :param run: the run state.
    :param loader: batches of ``(vi, ir)``.
    :param phase: 1 or 2.
    :return: mean of every loss term, weighted by batch size.
    """
    step = TrainingStep(run.model, phase, run.recon_loss, run.fusion_loss, run.autocast())
    run.model.eval()
    sums: Dict[str, float] = {}
    count = 0
    for vi, ir in loader:
        terms = step(_to_device(vi, run), _to_device(ir, run))
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value) * vi.shape[0]
        count += vi.shape[0]
    run.model.train()
    return {k: v / max(1, count) for k, v in sums.items()}


def _lrs(run: _Run) -> Dict[str, float]:
    return {g['name']: float(g['lr']) for g in run.optimizer.param_groups}


def _log_step(run: _Run, phase: int, values: Dict[str, float], norms: Dict[str, float]) -> None:
    run.metrics['steps'].append({'step': run.step, 'epoch': run.epoch, 'phase': phase,
                                 'loss': values['loss']})
    if run.writer is None:
        return
    for key, value in values.items():
        run.writer.add_scalar(f'train_phase{phase}/{key}', value, run.step)
    for name, lr in _lrs(run).items():
        run.writer.add_scalar(f'lr/{name}', lr, run.step)
    for name, norm in norms.items():
        run.writer.add_scalar(f'grad_norm/{name}', norm, run.step)


def plot_losses(metrics: Dict[str, Any], path: Path, phase1_epochs: int) -> Path:
    """Draw the loss curves (per logged step, and per epoch for train and held-out) to a PNG.

    :param metrics: the run's history.
    :param path: the PNG to write.
    :param phase1_epochs: epochs of phase I (for the phase boundary).
    :return: ``path``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for phase in (1, 2):
        points = [(s['step'], s['loss']) for s in metrics['steps'] if s['phase'] == phase]
        if points:
            axes[0].plot(*zip(*points), label=f'phase {phase}', linewidth=0.8)
    axes[0].set_xlabel('step')
    axes[0].set_ylabel('training loss (logged steps)')
    epochs = metrics['epochs']
    for split in ('train', 'val'):
        for phase in (1, 2):
            points = [(e['epoch'] + 1, e[split]['loss']) for e in epochs
                      if e.get(split) and e['phase'] == phase]
            if points:
                axes[1].plot(*zip(*points), marker='o', markersize=3,
                             linestyle='-' if split == 'train' else '--',
                             label=f'{split}, phase {phase}')
    if epochs and phase1_epochs:
        axes[1].axvline(phase1_epochs + 0.5, color='gray', linestyle='--', linewidth=0.8)
    axes[1].set_xlabel('epoch')
    axes[1].set_ylabel('mean loss (phase I left of the line, II right)')
    for ax in axes:
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name('.' + path.name + '.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _end_epoch(run: _Run, train_means: Dict[str, float], val_loader: Optional[DataLoader],
               ) -> None:
    phase = run.phase_of(run.epoch)
    lrs = _lrs(run)
    val = evaluate(run, val_loader, phase) if (val_loader is not None and run.dist.main) else {}
    run.metrics['epochs'].append({'epoch': run.epoch, 'phase': phase, 'train': train_means,
                                  'val': val, 'lr': lrs, 'step': run.step})
    if run.writer is not None:
        for key, value in train_means.items():
            run.writer.add_scalar(f'epoch_phase{phase}/train_{key}', value, run.epoch + 1)
        for key, value in val.items():
            run.writer.add_scalar(f'epoch_phase{phase}/val_{key}', value, run.epoch + 1)
        run.writer.flush()
    if run.dist.main:
        val_text = f', held-out {val["loss"]:.4f}' if val else ''
        print(f'epoch {run.epoch + 1}/{run.total_epochs} (phase {phase}): '
              f'train {train_means.get("loss", float("nan")):.4f}{val_text}, step {run.step}, '
              f'lr {lrs}', flush=True)
    run.scheduler.step()
    run.metrics['running'] = {}
    run.metrics['running_count'] = 0
    done_epoch = run.epoch
    run.epoch += 1
    run.batch = 0
    run.finished = run.epoch >= run.total_epochs
    extra = []
    if run.config.save_epoch_checkpoints:
        extra.append(f'epoch_{done_epoch + 1:03d}.pt')
    if run.config.save_phase_checkpoints and (
            run.epoch == run.config.phase1_epochs or run.finished) and run.epoch > 0:
        extra.append(f'phase{phase}.pt')
    _save(run, extra)
    if run.dist.main:
        plot_losses(run.metrics, run.run_dir / 'loss_curves.png', run.config.phase1_epochs)


# ----------------------------------------------------------------------------------------------
# set-up
# ----------------------------------------------------------------------------------------------

def _dist_from_env() -> _Dist:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', str(rank)))
    return _Dist(rank=rank, world=world, local_rank=local)


def _pick_device(config: TrainConfig, dist: _Dist) -> torch.device:
    if config.device == 'cpu':
        return torch.device('cpu')
    if config.device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
    if torch.cuda.is_available():
        return torch.device('cuda', dist.local_rank)
    return torch.device('cpu')


def data_paths(data: str) -> List[str]:
    """Split the ``data`` setting into patch files (comma-separated, e.g. one per source).

    Several files let a remote run carry its data in pieces (e.g. MSRS and LLVIP separately).

    :param data: ``'a.h5'`` or ``'a.h5,b.h5'``.
    :return: the paths, in order.
    """
    return [part.strip() for part in data.split(',') if part.strip()]


def _check_data_path(path: str) -> None:
    parts = [p.lower() for p in Path(path).resolve().parts]
    if any(a == 'ivf' and b == 'test' for a, b in zip(parts, parts[1:])):
        raise ConfigError(f'refusing to train on an evaluation set: {path} (ivf/test holds TNO '
                          'and RoadScene, which are for evaluation only)')


def _loaders(config: TrainConfig, dist: _Dist, device: torch.device):
    from sfdfuse_core.data.dataset import H5PatchDataset

    if not config.data:
        raise ConfigError('no training data: give --data FILE.h5 (from sfdfuse prepare) or set '
                          'data in the config')
    paths = data_paths(config.data)
    for path in paths:
        _check_data_path(path)
    parts = [H5PatchDataset(path) for path in paths]
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    n = len(dataset)
    if config.val_patches >= n:
        raise ConfigError(f'val_patches ({config.val_patches}) must be smaller than the data set '
                          f'({n} patches in {config.data})')
    split = torch.Generator()
    split.manual_seed(config.seed)
    order = torch.randperm(n, generator=split).tolist()
    train_idx = sorted(order[config.val_patches:])
    val_idx = sorted(order[:config.val_patches])
    train_set = Subset(dataset, train_idx)
    if config.batch_size % dist.world:
        raise ConfigError(f'batch_size ({config.batch_size}) must be divisible by the number of '
                          f'processes ({dist.world})')
    per_rank = config.batch_size // dist.world
    sampler = EpochSampler(len(train_set), config.seed, dist.rank, dist.world)
    pin = config.pin_memory and device.type == 'cuda'
    loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG
    loader_gen.manual_seed(config.seed)
    common = dict(num_workers=config.num_workers, pin_memory=pin, generator=loader_gen,
                  persistent_workers=False)
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=False,
                              **common)
    val_loader = None
    if val_idx:
        val_loader = DataLoader(Subset(dataset, val_idx), batch_size=per_rank, shuffle=False,
                                **common)
    steps = math.ceil(sampler.per_rank() / per_rank)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    return train_loader, sampler, val_loader, steps, per_rank, n


def _restore(run: _Run, state: Dict[str, Any]) -> None:
    run.model.load_state_dict(state['model'])
    run.optimizer.load_state_dict(state['optimizer'])
    run.scheduler.load_state_dict(dict(state['scheduler']))  # lr_lambdas saved as None
    run.epoch, run.batch, run.step = int(state['epoch']), int(state['batch']), int(state['step'])
    run.finished = bool(state.get('finished', False))
    run.metrics = state['metrics']
    set_rng_state(state['rng'])


def main(config: TrainConfig, resume: bool = False,
         on_step: Optional[Callable[[Any], None]] = None) -> RunResult:
    """Train SFDFuse (both phases) as ``config`` says; resume from ``last.pt`` when asked.

    :param config: the resolved run configuration.
    :param resume: continue the run in ``config.out`` from its last checkpoint (falling back to
        ``last.prev.pt`` when ``last.pt`` is corrupt).
    :param on_step: called with the run state after every optimiser step (tests use it to
        simulate a crash).
    :return: what was done.
    :raises ConfigError: bad configuration, missing data, or a resume with changed settings.
    :raises CheckpointError: resuming, but no usable checkpoint (the message names each file).
    """
    dist = _dist_from_env()
    device = _pick_device(config, dist)
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend=backend)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = config.cudnn_benchmark and not config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = Path(config.out)
    try:
        train_loader, sampler, val_loader, steps, per_rank, n = _loaders(config, dist, device)
        state = None
        if resume:
            state, found, problems = load_latest([run_dir / LAST, previous_path(run_dir / LAST)])
            for problem in problems:
                print(f'warning: {problem}; falling back to {found}', flush=True)
            if problems and dist.main and (run_dir / LAST).exists():
                # keep the bad file for inspection, out of the way of the next save's rotation
                os.replace(run_dir / LAST, run_dir / (LAST + '.corrupt'))
            if state is None:
                raise CheckpointError(f'--resume: no checkpoint in {run_dir} '
                                      f'(looked for {LAST} and {previous_path(LAST)})')
            changed = [k for k in changed_keys(state['train_config'], config_to_dict(config))
                       if k not in RUNTIME_KEYS]
            if changed:
                raise ConfigError(f'cannot resume {found}: settings differ from the run '
                                  f'({changed}); start a new run (--out) to change them')
        elif (run_dir / LAST).exists():
            raise ConfigError(f'{run_dir} already holds a run ({LAST}); pass --resume to '
                              'continue it or choose another --out')
        torch.manual_seed(config.seed)
        model = build_model(config.model).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config)
        run = _Run(config=config, model=model, optimizer=optimizer, scheduler=scheduler,
                   recon_loss=ReconstructionLoss(config.loss),
                   fusion_loss=FusionLoss(config.loss), device=device, dist=dist,
                   run_dir=run_dir, on_step=on_step)
        if state is not None:
            _restore(run, state)  # rank 0's random state: exact on one process
            del state
        if dist.world > 1 and dist.rank > 0:
            torch.manual_seed(config.seed + dist.rank + 1_000_003 * run.step)  # own dropout
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / 'config.yaml')
            from torch.utils.tensorboard import SummaryWriter
            run.writer = SummaryWriter(str(run_dir / 'tb'), purge_step=run.step or None)
            print(f'training on {device} ({dist.world} process(es)): {n} patches '
                  f'({n - config.val_patches} train, {config.val_patches} held out), '
                  f'{steps} steps/epoch of {config.batch_size}, epochs {run.epoch}/'
                  f'{run.total_epochs}, step {run.step}; run folder {run_dir}', flush=True)
        while run.epoch < run.total_epochs:
            if 0 < config.stop_after_steps <= run.step:
                break
            sampler.set_epoch(run.epoch, skip=run.batch * per_rank)
            means = train_one_epoch(run, train_loader, steps)
            if run.batch < steps:  # stopped by the step budget
                break
            _end_epoch(run, means, val_loader)
        final = None
        if run.finished and dist.main:
            final = _export(run, n)
        if dist.main and run.metrics['epochs']:
            plot_losses(run.metrics, run_dir / 'loss_curves.png', config.phase1_epochs)
        if run.writer is not None:
            run.writer.close()
        return RunResult(run_dir=run_dir, finished=run.finished, step=run.step,
                         epoch=run.epoch, metrics=run.metrics, final_weights=final)
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _export(run: _Run, patches: int) -> Optional[Path]:
    try:
        from sfdfuse_core.weights import save_weights
    except ImportError:
        print('warning: sfdfuse_core.weights is missing; final.safetensors not written '
              f'(the final weights are in {run.run_dir / LAST})', flush=True)
        return None
    last = run.metrics['epochs'][-1] if run.metrics['epochs'] else {}
    metadata = {'network': run.config.network, 'trained_on': run.config.data,
                'sources': _data_sources(run.config.data), 'patches': patches,
                'steps': run.step, 'epochs': run.epoch, 'phase1_epochs': run.config.phase1_epochs,
                'phase2_epochs': run.config.phase2_epochs, 'batch_size': run.config.batch_size,
                'lr': run.config.lr, 'seed': run.config.seed,
                'final_train_loss': last.get('train', {}).get('loss'),
                'final_val_loss': last.get('val', {}).get('loss'),
                'recipe': 'sfdfuse train (two phases: reconstruction, fusion); the resolved '
                          'config is config.yaml of the run'}
    if any('LLVIP' in str(source) for source in metadata['sources']):
        metadata['licence'] = ('trained on LLVIP, whose licence limits use to non-commercial '
                               'research (cite LLVIP)')
    path = save_weights(run.model, run.run_dir / 'final.safetensors', run.model.config,
                        metadata=metadata)
    print(f'final weights: {path}', flush=True)
    return path


def _data_sources(data: str) -> List[str]:
    """Return the image folders the patch files were cut from (their ``sources`` attribute)."""
    import json

    import h5py

    sources: List[str] = []
    for path in data_paths(data):
        try:
            with h5py.File(path, 'r') as h5:
                raw = h5.attrs.get('sources', '[]')
            for pair in json.loads(raw if isinstance(raw, str) else raw.decode()):
                sources.append(' + '.join(map(str, pair)) if isinstance(pair, list) else str(pair))
        except (OSError, ValueError, TypeError, AttributeError):
            sources.append(f'{path} (no source attribute)')
    return sources
