"""One resumable, deterministic optimisation loop shared by the VAE and the UNet stage.

Determinism without saving RNG state: every step runs inside `torch.random.fork_rng` with the
global generator seeded from (run seed, stage, step), and each epoch's batch order is a
permutation keyed by (run seed, stage, epoch). So step s draws the same batch, noise, timesteps
and dropout whether the run was interrupted before it or not, and the caller's global RNG is
left untouched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..rng import derive_seed, sample_generator
from .checkpoint import load_checkpoint, save_checkpoint

LOSS_WINDOW = 50  # the "final loss" is the mean over the last LOSS_WINDOW steps


@dataclass
class LoopResult:
    steps: int
    final: dict[str, float]
    curve: list = field(default_factory=list)  # [step, {name: window mean}] at each checkpoint
    seconds: float = 0.0  # optimisation wall time summed over all sessions of this run
    cpu_seconds: float = 0.0  # process CPU time of the same (≈ wall time on an idle core)
    resumed_from: int = 0


def batch_indices(n: int, batch: int, step: int, seed: int, stage: str) -> torch.Tensor:
    """Indices of step `step`: epochs are seeded permutations cut into ⌊n/batch⌋ full batches."""
    if batch >= n:
        return torch.randperm(n, generator=sample_generator(seed, f"{stage}-epoch-{step}", "batch-order"))
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=sample_generator(seed, f"{stage}-epoch-{epoch}", "batch-order"))
    return perm[pos * batch : (pos + 1) * batch]


def init_seeded(build: Callable, seed: int, stage: str):
    """Build a model with weights drawn from a seed keyed by (seed, stage), leaving global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stage, "init"))
        return build()


def optimize(
    stage: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[int], dict[str, torch.Tensor]],
    total_steps: int,
    seed: int,
    ckpt_dir: Path,
    checkpoint_every: int,
    progress: bool = True,
    callback: Callable[[str, int, dict], None] | None = None,
) -> LoopResult:
    """Run steps [start, total_steps) of `stage`, resuming from its last checkpoint if present.

    step_loss(step) returns a dict of scalar tensors whose "loss" entry is minimised.
    `callback(stage, step, losses)` is called after each step (progress reporting; tests use
    it to interrupt a run).
    """
    from tqdm.auto import tqdm

    info = load_checkpoint(ckpt_dir, stage, model, optimizer) or {}
    start = int(info.get("step", 0))
    if start > total_steps:
        raise ConfigError(
            f"{ckpt_dir}: the {stage} stage already ran {start} steps, more than the {total_steps} asked for; "
            "use another output folder to train a shorter run"
        )
    window: list[dict[str, float]] = list(info.get("window", []))
    curve = list(info.get("curve", []))
    seconds = float(info.get("seconds", 0.0))
    cpu_seconds = float(info.get("cpu_seconds", 0.0))
    device = next(model.parameters()).device
    fork_devices = [device] if device.type == "cuda" else []
    model.train()
    bar = tqdm(total=total_steps, initial=start, desc=stage, disable=not progress, leave=False)
    t0, c0 = time.perf_counter(), time.process_time()

    def snapshot(step):
        means = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {}
        return {"window": window, "curve": curve, "seconds": seconds + time.perf_counter() - t0,
                "cpu_seconds": cpu_seconds + time.process_time() - c0, "final": means}

    try:
        for step in range(start, total_steps):
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(derive_seed(seed, f"{stage}-step-{step}", "train"))
                losses = step_loss(step)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
            values = {k: float(v.detach()) for k, v in losses.items()}
            window = (window + [values])[-LOSS_WINDOW:]
            bar.update(1)
            if step % 10 == 0 or step == total_steps - 1:
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            done = step + 1
            if done % checkpoint_every == 0 or done == total_steps:
                snap = snapshot(done)
                curve.append([done, snap["final"]])
                save_checkpoint(ckpt_dir, stage, done, model, optimizer, snapshot(done))
            if callback is not None:
                callback(stage, step, values)
    finally:
        bar.close()
    final = snapshot(total_steps)
    if not final["final"] and info:
        final["final"] = info.get("final", {})
    return LoopResult(steps=total_steps, final=final["final"], curve=curve,
                      seconds=final["seconds"], cpu_seconds=final["cpu_seconds"], resumed_from=start)
