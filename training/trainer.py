"""The training loop: :func:`train` takes a :class:`TrainConfig` and returns the checkpoint path.

:func:`train` reads top to bottom: :func:`training.run.setup` (processes, resume record, data,
model, optimizer, all in one :class:`training.run.Run`), evaluate before, the step loop
(:func:`train_step`, then :class:`StepLog`, periodic evaluation and checkpoints), :func:`finish`
(evaluate after, write outputs). The resume record is :class:`training.train_state.TrainState`.

Seeding: the only global RNG touch is :func:`training.initial_model.initial_model` seeding torch for
a random init. Crops, ladders and the held-out split come from generators derived from
``cfg.seed`` and the step, which is what makes ``--resume`` continue exactly.

Multi-GPU / multi-node: launch with ``torchrun``; ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` turn on
DistributedDataParallel, each process taking its own share of every step's micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from qualiclip_train.config import TrainConfig, validate
from qualiclip_train.degradation.ladders import apply_ladder, sample_ladder
from qualiclip_train.evaluation import degradation_ranking, format_report
from qualiclip_train.initial_model import set_train_mode
from qualiclip_train.losses import qualiclip_loss
from qualiclip_train.metrics import (
    append_metrics,
    plot_curves,
    tensorboard_writer,
    truncate_metrics,
)
from qualiclip_train.run import Run, setup
from qualiclip_train.schedule import lr_at
from qualiclip_train.train_state import STATE_NAME

from qualiclip.checkpoint import write_checkpoint, write_official_checkpoint

log = logging.getLogger("qualiclip_train")

CHECKPOINT_NAME = "qualiclip-finetuned.pth"
OFFICIAL_NAME = "qualiclip-finetuned-official.pth"
LOSSES = ("loss", "l_pos", "l_neg", "l_cons")


def train(cfg: TrainConfig, *, validated: bool = False) -> Path:
    """Run training as configured; returns the final checkpoint's path (project format).

    ``validated``: the caller has already run :func:`training.config.validate` on ``cfg`` (the
    CLI does, to report a bad option as a usage error), so it is not checked a second time.
    """
    if not validated:
        validate(cfg)
    run = setup(cfg)
    if run.dist.main and run.eval_before is None:
        run.eval_before = evaluate(run, "before training")
        run.history.append({"step": 0, **_eval_row(run.eval_before)})
    run.dist.barrier()

    batches = iter(run.loader)
    logbook = StepLog(run)
    set_train_mode(run.model, run.train_bn)
    for step in range(run.start_step, run.last_step):
        lr = lr_at(step, run.base_lr, run.warmup, run.total_steps, cfg.min_lr_ratio)
        metrics = train_step(run, batches, lr)
        done = step + 1
        logbook.record(done, lr, metrics)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < run.total_steps:
            evaluate_during(run, done, logbook)
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == run.last_step:
            save_progress(run, done)
    logbook.close()

    if run.last_step < run.total_steps:
        log.info("stopped after step %d of %d (--stop-after); continue with --resume",
                 run.last_step, run.total_steps)
        return run.out / CHECKPOINT_NAME
    return finish(run)


# --- one step ---------------------------------------------------------------------------------
@dataclass
class StepMetrics:
    """What one step measured: each micro-batch's losses (divided by ``accum_steps``, in order)
    and the degraded images it scored, summed over processes."""

    losses: list[dict[str, float]] = field(default_factory=list)
    images: int = 0


def train_step(run: Run, batches: Iterator[dict], lr: float) -> StepMetrics:
    """One optimizer step at ``lr``: ``accum_steps`` micro-batches (ladders, forward, the three
    losses, backward; gradients synchronised across processes on the last one), then AdamW."""
    cfg, metrics = run.cfg, StepMetrics()
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    for micro in range(cfg.accum_steps):
        degraded = _degraded(run, next(batches))
        sync = micro == cfg.accum_steps - 1 or run.dist.world_size == 1
        with contextlib.nullcontext() if sync else run.scorer.no_sync():
            parts = _losses(run, degraded)
            run.scaler.scale(parts["loss"] / cfg.accum_steps).backward()
        metrics.losses.append({k: float(parts[k].detach()) / cfg.accum_steps for k in LOSSES})
        metrics.images += degraded.shape[0] * 2 * cfg.levels * run.dist.world_size
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return metrics


def _degraded(run: Run, batch: dict) -> torch.Tensor:
    """``(B, 2, L, 3, C, C)`` in [0, 1] on the device: from the workers, or degraded here."""
    if "degraded" in batch:
        return batch["degraded"].to(run.device, non_blocking=True).float().div_(255)
    crops = batch["crops"].to(run.device, non_blocking=True).float().div_(255)
    with torch.no_grad():
        return degrade_batch(crops, batch["ladder_seed"], run.cfg.levels,
                             run.cfg.max_distortions)


def _losses(run: Run, degraded: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg, amp = run.cfg, run.amp_dtype
    b, c = degraded.shape[0], degraded.shape[-1]
    with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        sims = run.scorer(degraded.reshape(-1, 3, c, c))
    n_pairs = len(run.initial.prompt_pairs)
    sims = sims.float().view(b, 2, cfg.levels, n_pairs, 2)[:, :, :, run.pair_index]
    return qualiclip_loss(sims[..., 0], sims[..., 1], cfg.margin, cfg.consistency_weight,
                          cfg.consistency_tolerance, cfg.adjacent_only)


def degrade_batch(crops: torch.Tensor, ladder_seeds: torch.Tensor, levels: int,
                  max_distortions: int) -> torch.Tensor:
    """``(B, 2, 3, C, C)`` in [0, 1] -> ``(B, 2, L, 3, C, C)``: each image's own random
    composition, identical for its two crops, at levels 1..L."""
    out = []
    for pair, seed in zip(crops, ladder_seeds.tolist(), strict=True):
        ladder = sample_ladder(torch.Generator().manual_seed(int(seed)), max_distortions)
        out.append(apply_ladder(pair, ladder, levels).transpose(0, 1))
    return torch.stack(out)


# --- logging, evaluation, checkpoints ---------------------------------------------------------
class StepLog:
    """One row of mean losses every ``--log-every`` steps (and at the last): ``metrics.csv``,
    TensorBoard, and a line on the progress bar or the log. Rows are averaged over processes."""

    def __init__(self, run: Run) -> None:
        self.run, self.path = run, run.out / "metrics.csv"
        cfg, main = run.cfg, run.dist.main
        if main:
            truncate_metrics(self.path, run.start_step)
        self.writer = tensorboard_writer(run.out) if (cfg.tensorboard and main) else None
        self._reset()
        self.bar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start_step, desc="train",
                            unit="step", file=sys.stderr, dynamic_ncols=True)

    def _reset(self) -> None:
        self.sums, self.images, self.steps = dict.fromkeys(LOSSES, 0.0), 0, 0
        self.start = time.perf_counter()

    def record(self, done: int, lr: float, metrics: StepMetrics) -> None:
        for parts in metrics.losses:
            for k in LOSSES:
                self.sums[k] += parts[k]
        self.images, self.steps = self.images + metrics.images, self.steps + 1
        if self.bar is not None:
            self.bar.update(1)
        if done % self.run.cfg.log_every == 0 or done == self.run.total_steps:
            row = self._row(done, lr)
            if self.run.dist.main:
                self._write(row)
            self._reset()

    def _row(self, done: int, lr: float) -> dict[str, float]:
        values = torch.tensor([self.sums[k] / max(1, self.steps) for k in LOSSES],
                              dtype=torch.float64)
        if self.run.dist.world_size > 1:
            values = values.to(self.run.device)  # NCCL reduces CUDA tensors only, gloo CPU ones
            torch.distributed.all_reduce(values)
            values = values.cpu() / self.run.dist.world_size
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"step": done, **{k: float(v) for k, v in zip(LOSSES, values, strict=True)},
                "lr": lr, "images_per_s": self.images / elapsed}

    def _write(self, row: dict[str, float]) -> None:
        append_metrics(self.path, row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, row["step"])
        message = (f"step {row['step']}/{self.run.total_steps} loss {row['loss']:.4f} (pos "
                   f"{row['l_pos']:.4f} neg {row['l_neg']:.4f} cons {row['l_cons']:.4f})"
                   f" lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s")
        (self.bar.write(message, file=sys.stderr) if self.bar is not None else log.info(message))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def evaluate(run: Run, title: str) -> dict:
    """The held-out degradation ranking (see :func:`degradation_ranking`), logged."""
    cfg = run.cfg
    result = degradation_ranking(run.model, run.data.held_images, cfg.crop_size, cfg.levels,
                                 cfg.seed)
    log.info(format_report(title, result))
    return result


def evaluate_during(run: Run, done: int, logbook: StepLog) -> None:
    """A periodic evaluation after step ``done``, into the history; then back to training."""
    if run.dist.main:
        run.history.append({"step": done, **_eval_row(evaluate(run, f"step {done}"))})
        if logbook.writer is not None:
            logbook.writer.add_scalar("eval/srcc", run.history[-1]["srcc"], done)
    set_train_mode(run.model, run.train_bn)
    run.dist.barrier()


def save_progress(run: Run, done: int) -> None:
    """The resume record after step ``done``, and the checkpoint so far unless the run is
    complete (then :func:`finish` writes it with the final evaluation)."""
    if run.dist.main:
        run.state(done).save(run.out / STATE_NAME)
        if done < run.total_steps:
            write_outputs(run, done)
    run.dist.barrier()


def finish(run: Run) -> Path:
    """Evaluate after training; write the record, checkpoint(s), ``eval.json`` and the curves."""
    ckpt = run.out / CHECKPOINT_NAME
    if run.dist.main:
        eval_after = evaluate(run, "after training")
        run.history.append({"step": run.total_steps, **_eval_row(eval_after)})
        run.state(run.total_steps).save(run.out / STATE_NAME)
        ckpt = write_outputs(run, run.total_steps, eval_after)
        (run.out / "eval.json").write_text(json.dumps(
            {"before": run.eval_before, "after": eval_after, "history": run.history}, indent=2))
        plot_curves(run.out / "metrics.csv", run.history, run.out / "training_curves.png")
    run.dist.barrier()
    if run.dist.world_size > 1:
        torch.distributed.destroy_process_group()
    return ckpt


def _eval_row(result: dict) -> dict:
    return {"srcc": result["srcc"], **{f"srcc_{g}": v for g, v in result["per_group"].items()}}


def write_outputs(run: Run, step: int, eval_after: dict | None = None) -> Path:
    """The project-format checkpoint after ``step`` (and the official one when complete and
    ``--export-official``); returns its path."""
    cfg, initial = run.cfg, run.initial
    state = {k: v for k, v in initial.state_dict.items() if not k.startswith("visual.")}
    state.update({f"visual.{k}": v for k, v in run.model.visual.state_dict().items()})
    metadata = {"trained_steps": step, "total_steps": run.total_steps, "init": cfg.init,
                "init_source": initial.source, "train_images": len(run.data.train_paths),
                "held_out_images": len(run.data.held_paths),
                "world_size": run.dist.world_size, "eval_before": run.eval_before,
                "eval_after": eval_after}
    if initial.license:
        metadata["license"] = initial.license
    training_config = {**cfg.to_dict(), "resolved_lr": cfg.peak_lr(),
                       "resolved_steps": run.total_steps}
    path = write_checkpoint(run.out / CHECKPOINT_NAME, model_config=initial.model_config,
                            state_dict=state, prompt_features=initial.prompt_features,
                            prompt_pairs=initial.prompt_pairs, training_config=training_config,
                            metadata=metadata)
    if cfg.export_official and step == run.total_steps:
        write_official_checkpoint(run.out / OFFICIAL_NAME, state_dict=state,
                                  prompt_features=initial.prompt_features)
    return path
