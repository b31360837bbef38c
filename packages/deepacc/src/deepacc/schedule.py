"""Learning-rate and margin schedules of DeepACC training (Sec. 3.1 and the s / m warm-up, README "Margin branch
health"): pure functions of the iteration, so a resumed run continues exactly."""

from __future__ import annotations

from deepacc.config import TrainConfig

__all__ = ["effective_lr", "lr_factor", "margin_factor"]


def effective_lr(tcfg: TrainConfig, world_size: int = 1) -> float:
    """lr actually used: ``lr * effective_batch / base_batch`` (linear scaling rule) or the literal ``lr``.

    The effective batch is ``batch_size`` (per process) times the number of processes.
    """
    from medshared.distributed import scale_lr

    rule = "none" if tcfg.lr_scaling == "literal" else "linear"
    return scale_lr(tcfg.lr, tcfg.base_batch_size, tcfg.batch_size * world_size, rule)


def lr_factor(iteration: int, epoch: int, tcfg: TrainConfig) -> float:
    """Multiplier of the base lr: linear warm-up over ``warmup_iters`` from ``warmup_factor``, then x``gamma`` at
    each milestone epoch (``epoch`` is 0-based; milestone 16 means epochs 17.. run at 0.1x)."""
    f = tcfg.gamma ** sum(epoch >= m for m in tcfg.milestones)
    if iteration < tcfg.warmup_iters:
        alpha = iteration / max(tcfg.warmup_iters, 1)
        f *= tcfg.warmup_factor * (1 - alpha) + alpha
    return f


def margin_factor(iteration: int, tcfg: TrainConfig) -> float:
    """Share of the AAM margin in use at ``iteration``: linear from 0 to 1 over ``train.margin_warmup_iters``."""
    if tcfg.margin_warmup_iters <= 0:
        return 1.0
    return min(1.0, iteration / tcfg.margin_warmup_iters)
