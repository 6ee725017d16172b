"""The training loop: :func:`train` takes a :class:`TrainConfig` and returns the checkpoint path.

Reads top to bottom: set up (processes, data, model, optimizer, resume), evaluate before, the
step loop (ladders on the device, three losses, accumulation, AdamW, schedule, logs, periodic
evaluation and checkpoints), evaluate after, write outputs.

Seeding: the only global RNG touch is :func:`training.model_init.initial_model` seeding torch for
a random init. Crops, ladders and the held-out split come from generators derived from
``cfg.seed`` and the step, which is what makes ``--resume`` continue exactly.

Multi-GPU / multi-node: launch with ``torchrun``; ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` turn on
DistributedDataParallel, each process taking its own share of every step's micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from qualiclip.checkpoint import atomic_torch_save, write_checkpoint, write_official_checkpoint
from training.config import ConfigError, TrainConfig, resume_conflicts, validate
from training.data import (
    PristineCrops,
    StepBatchSampler,
    find_images,
    load_held_out,
    pristine_differences,
    pristine_fingerprint,
    readable_images,
    split_holdout,
)
from training.evaluation import degradation_ranking, format_report
from training.ladders import apply_ladder, sample_ladder
from training.losses import qualiclip_loss
from training.metrics import append_metrics, plot_curves, tensorboard_writer, truncate_metrics
from training.model_init import PromptSimilarity, initial_model, set_train_mode, trainable_model
from training.schedule import lr_at

log = logging.getLogger("training")

CHECKPOINT_NAME = "qualiclip-finetuned.pth"
OFFICIAL_NAME = "qualiclip-finetuned-official.pth"
STATE_NAME = "train_state.pt"


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    elif cfg.device == "cuda" and world > 1:
        device = torch.device(f"cuda:{dist.local_rank}")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def _barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def resolve_steps(cfg: TrainConfig, n_train: int, world_size: int) -> int:
    """Optimizer steps: ``--steps``, or ``--epochs`` over the training images, or 2000."""
    if cfg.steps is not None:
        return int(cfg.steps)
    if cfg.epochs is not None:
        per_step = cfg.batch_size * cfg.accum_steps * world_size
        return max(1, math.ceil(cfg.epochs * n_train / per_step))
    return 2000


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def degrade_batch(crops: torch.Tensor, ladder_seeds: torch.Tensor, levels: int,
                  max_distortions: int) -> torch.Tensor:
    """``(B, 2, 3, C, C)`` in [0, 1] -> ``(B, 2, L, 3, C, C)``: each image's own random
    composition, identical for its two crops, at levels 1..L."""
    out = []
    for pair, seed in zip(crops, ladder_seeds.tolist(), strict=True):
        ladder = sample_ladder(torch.Generator().manual_seed(int(seed)), max_distortions)
        out.append(apply_ladder(pair, ladder, levels).transpose(0, 1))
    return torch.stack(out)


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the final checkpoint's path (project format)."""
    validate(cfg)
    dist, device = _setup_distributed(cfg)
    out = Path(cfg.output_dir).expanduser()
    if dist.main:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    else:
        log.setLevel(logging.WARNING)

    # The run being resumed decides the options: check them before any weights are fetched.
    state = _read_state(out / STATE_NAME) if cfg.resume else None
    if state is not None:
        _check_resume(state, cfg, dist.world_size)

    # --- data -----------------------------------------------------------------------------
    found = find_images(cfg.pristine_dir)
    run_info = {"pristine": pristine_fingerprint(cfg.pristine_dir, found),
                "pristine_changes": list(state.get("pristine_changes", [])) if state else []}
    if state is not None:
        _check_pristine_unchanged(state, run_info, cfg)
    paths = readable_images(found)
    if not paths:
        raise ValueError(f"--pristine-dir {cfg.pristine_dir}: none of the images is readable")
    train_paths, held_paths = split_holdout(paths, cfg.val_images, cfg.seed)
    if set(held_paths) & set(train_paths):
        log.warning("only %d readable image: it is both trained on and evaluated, so the "
                    "held-out SRCC is not a held-out measure", len(paths))
    try:
        held_images = load_held_out(held_paths) if dist.main else []
    except ValueError as exc:
        raise ConfigError(f"--pristine-dir {cfg.pristine_dir}: {exc}") from exc
    total_steps = resolve_steps(cfg, len(train_paths), dist.world_size)
    if state is not None and int(state["total_steps"]) != total_steps:
        raise ConfigError(f"--resume: the saved run has {state['total_steps']} steps, this "
                          f"configuration {total_steps}; use the same --steps/--epochs")
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * total_steps)
    base_lr = cfg.peak_lr()
    train_bn = cfg.train_bn or cfg.init == "random"  # random BN statistics mean nothing
    log.info("training on %d images (%d held out for evaluation), %d steps, device %s, "
             "%d process(es)", len(train_paths), len(held_paths), total_steps, device,
             dist.world_size)

    # --- model ----------------------------------------------------------------------------
    # One process per machine fetches --init weights into the cache (LOCAL_RANK 0 goes first,
    # the others then find the file), instead of every process downloading the same file.
    local_first = os.environ.get("LOCAL_RANK", "0") == "0"
    if not local_first:
        _barrier(dist)
    initial = initial_model(cfg.init, cfg.arch, cfg.seed)
    if local_first:
        _barrier(dist)
    if initial.license:
        log.info("starting from %s; licence: %s", initial.source, initial.license)
    model = trainable_model(initial).to(device)
    scorer = PromptSimilarity(model)
    n_pairs = len(initial.prompt_pairs)
    pair_index = list(range(n_pairs)) if cfg.prompts == "all" else [0]
    params = [p for p in model.visual.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step, history, eval_before = 0, [], None
    if state is not None:
        model.visual.load_state_dict(state["visual"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step, history = int(state["step"]), list(state["eval_history"])
        eval_before = state["eval_before"]
        log.info("resuming at step %d of %d", start_step, total_steps)
    ddp_scorer: torch.nn.Module = scorer
    if dist.world_size > 1:
        ddp_scorer = torch.nn.parallel.DistributedDataParallel(
            scorer, device_ids=[device.index] if device.type == "cuda" else None)

    def evaluate(title: str) -> dict:
        result = degradation_ranking(model, held_images, cfg.crop_size, cfg.levels, cfg.seed)
        log.info(format_report(title, result))
        return result

    if dist.main and eval_before is None:
        eval_before = evaluate("before training")
        history.append({"step": 0, **_eval_row(eval_before)})
    _barrier(dist)

    # --- loop -----------------------------------------------------------------------------
    sampler = StepBatchSampler(len(train_paths), cfg.batch_size, cfg.seed,
                               start=start_step * cfg.accum_steps,
                               stop=total_steps * cfg.accum_steps,
                               rank=dist.rank, world_size=dist.world_size)
    in_workers = cfg.degrade_on == "workers" or (cfg.degrade_on == "auto" and cfg.workers > 0)
    dataset = PristineCrops(train_paths, cfg.crop_size,
                            levels=cfg.levels if in_workers else None,
                            max_distortions=cfg.max_distortions)
    loader = DataLoader(dataset, batch_sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda")
    batches = iter(loader)
    metrics_path = out / "metrics.csv"
    if dist.main:
        truncate_metrics(metrics_path, start_step)
    writer = tensorboard_writer(out) if (cfg.tensorboard and dist.main) else None
    last_step = total_steps if cfg.stop_after is None else min(total_steps,
                                                               start_step + cfg.stop_after)
    set_train_mode(model, train_bn)
    window = {k: 0.0 for k in ("loss", "l_pos", "l_neg", "l_cons")}
    window_images, window_steps, window_start = 0, 0, time.perf_counter()
    bar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    for step in range(start_step, last_step):
        lr = lr_at(step, base_lr, warmup, total_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.accum_steps):
            batch = next(batches)
            if "degraded" in batch:
                degraded = batch["degraded"].to(device, non_blocking=True).float().div_(255)
            else:
                crops = batch["crops"].to(device, non_blocking=True).float().div_(255)
                with torch.no_grad():
                    degraded = degrade_batch(crops, batch["ladder_seed"], cfg.levels,
                                             cfg.max_distortions)
            b, c = degraded.shape[0], degraded.shape[-1]
            sync = (micro == cfg.accum_steps - 1 or dist.world_size == 1)
            ctx = contextlib.nullcontext() if sync else ddp_scorer.no_sync()
            with ctx:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    sims = ddp_scorer(degraded.reshape(-1, 3, c, c))
                sims = sims.float().view(b, 2, cfg.levels, n_pairs, 2)[:, :, :, pair_index]
                parts = qualiclip_loss(sims[..., 0], sims[..., 1], cfg.margin,
                                       cfg.consistency_weight, cfg.consistency_tolerance,
                                       cfg.adjacent_only)
                scaler.scale(parts["loss"] / cfg.accum_steps).backward()
            for k in window:
                window[k] += float(parts[k].detach()) / cfg.accum_steps
            window_images += degraded.shape[0] * 2 * cfg.levels * dist.world_size
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_steps += 1
        done = step + 1
        if bar is not None:
            bar.update(1)

        if done % cfg.log_every == 0 or done == total_steps:
            row = _log_row(window, window_steps, window_images, window_start, lr, done, dist,
                           device)
            if dist.main:
                append_metrics(metrics_path, row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, done)
                message = (f"step {done}/{total_steps} loss {row['loss']:.4f} (pos "
                           f"{row['l_pos']:.4f} neg {row['l_neg']:.4f} cons {row['l_cons']:.4f})"
                           f" lr {lr:.2e} {row['images_per_s']:.1f} img/s")
                (bar.write(message, file=sys.stderr) if bar is not None else log.info(message))
            window = dict.fromkeys(window, 0.0)
            window_images, window_steps, window_start = 0, 0, time.perf_counter()
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
            if dist.main:
                history.append({"step": done, **_eval_row(evaluate(f"step {done}"))})
                if writer is not None:
                    writer.add_scalar("eval/srcc", history[-1]["srcc"], done)
            set_train_mode(model, train_bn)
            _barrier(dist)
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == last_step:
            if dist.main:
                _save_state(out, model, optimizer, scaler, done, total_steps, history,
                            eval_before, cfg, dist.world_size, run_info)
                if done < total_steps:
                    _write_outputs(out, cfg, initial, model, done, total_steps, eval_before,
                                   None, len(train_paths), len(held_paths), dist)
            _barrier(dist)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()

    # --- finish ---------------------------------------------------------------------------
    ckpt = out / CHECKPOINT_NAME
    if last_step < total_steps:
        log.info("stopped after step %d of %d (--stop-after); continue with --resume",
                 last_step, total_steps)
        return ckpt
    if dist.main:
        eval_after = evaluate("after training")
        history.append({"step": total_steps, **_eval_row(eval_after)})
        _save_state(out, model, optimizer, scaler, total_steps, total_steps, history,
                    eval_before, cfg, dist.world_size, run_info)
        ckpt = _write_outputs(out, cfg, initial, model, total_steps, total_steps, eval_before,
                              eval_after, len(train_paths), len(held_paths), dist)
        (out / "eval.json").write_text(json.dumps(
            {"before": eval_before, "after": eval_after, "history": history}, indent=2))
        plot_curves(metrics_path, history, out / "training_curves.png")
    _barrier(dist)
    if dist.world_size > 1:
        torch.distributed.destroy_process_group()
    return ckpt


# --- helpers ----------------------------------------------------------------------------------
def _eval_row(result: dict) -> dict:
    return {"srcc": result["srcc"], **{f"srcc_{g}": v for g, v in result["per_group"].items()}}


def _log_row(window: dict, steps: int, images: int, start: float, lr: float, done: int,
             dist: Dist, device: torch.device) -> dict[str, float]:
    values = torch.tensor([window[k] / max(1, steps) for k in ("loss", "l_pos", "l_neg",
                                                                "l_cons")], dtype=torch.float64)
    if dist.world_size > 1:
        values = values.to(device)  # NCCL reduces CUDA tensors only, gloo CPU ones
        torch.distributed.all_reduce(values)
        values = values.cpu() / dist.world_size
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {"step": done, "loss": float(values[0]), "l_pos": float(values[1]),
            "l_neg": float(values[2]), "l_cons": float(values[3]), "lr": lr,
            "images_per_s": images / elapsed}


def _check_resume(state: dict, cfg: TrainConfig, world_size: int) -> None:
    """Refuse to continue a run under options that would change its result."""
    saved = state.get("config")
    if saved is None:  # written before configs were saved: nothing to compare
        log.warning("--resume: %s records no configuration; not checking options", STATE_NAME)
        return
    conflicts = resume_conflicts(saved, cfg)
    if int(state.get("world_size", world_size)) != world_size:
        conflicts.append(f"processes (GPUs): {state['world_size']} -> {world_size}")
    if conflicts:
        raise ConfigError("--resume: these options differ from the run being resumed and would "
                         "change its result: " + "; ".join(conflicts) + ". Resume with the "
                         "original options, or start a new run in another --output-dir")


_STATE_KEYS = ("step", "total_steps", "visual", "optimizer", "scaler", "eval_history",
               "eval_before")


def _read_state(path: Path) -> dict:
    """The saved training state, or one :class:`ConfigError` line if it is corrupt."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, foreign file: all mean "corrupt"
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise ConfigError(f"--resume: {path} is corrupt or not a training state "
                          f"({type(exc).__name__}: {first}); start a new run with "
                          "--overwrite") from exc
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"--resume: {path} is not a complete training state (missing "
                          f"{', '.join(missing)}); start a new run with --overwrite")
    return state


def _check_pristine_unchanged(state: dict, run_info: dict, cfg: TrainConfig) -> None:
    """Refuse to resume on a pristine set other than the run's, unless allowed (then record)."""
    before = state.get("pristine")
    if before is None:  # written before fingerprints were saved: nothing to compare
        log.warning("--resume: %s records no pristine file list; not checking it", STATE_NAME)
        run_info["pristine"] = None
        return
    changes = pristine_differences(before, run_info["pristine"])
    if not changes:
        return
    if not cfg.allow_changed_pristine:
        raise ConfigError(f"--resume: --pristine-dir {cfg.pristine_dir} changed since the run "
                          f"started ({'; '.join(changes)}), which changes the held-out split "
                          "and the data order. Restore the files, or pass "
                          "--allow-changed-pristine to continue anyway (recorded)")
    log.warning("--resume: continuing on a changed pristine set (%s)", "; ".join(changes))
    run_info["pristine_changes"].append({"step": int(state["step"]), "changes": changes})


def _save_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, step: int, total_steps: int, history: list,
                eval_before: dict | None, cfg: TrainConfig, world_size: int,
                run_info: dict) -> None:
    """``run_info``: ``pristine`` (the fingerprint the run started from, checked on resume) and
    ``pristine_changes`` (what ``--allow-changed-pristine`` let through, and when)."""
    atomic_torch_save({"step": step, "total_steps": total_steps,
                       "config": cfg.to_dict(), "world_size": world_size,
                       "visual": model.visual.state_dict(), "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict(), "eval_history": history,
                       "eval_before": eval_before, **run_info}, out / STATE_NAME)


def _write_outputs(out: Path, cfg: TrainConfig, initial: Any, model: torch.nn.Module,
                   step: int, total_steps: int, eval_before: dict | None,
                   eval_after: dict | None, n_train: int, n_held: int, dist: Dist) -> Path:
    state = {k: v for k, v in initial.state_dict.items() if not k.startswith("visual.")}
    state.update({f"visual.{k}": v for k, v in model.visual.state_dict().items()})
    metadata = {"trained_steps": step, "total_steps": total_steps, "init": cfg.init,
                "init_source": initial.source, "train_images": n_train,
                "held_out_images": n_held, "world_size": dist.world_size,
                "eval_before": eval_before, "eval_after": eval_after}
    if initial.license:
        metadata["license"] = initial.license
    training_config = {**cfg.to_dict(), "resolved_lr": cfg.peak_lr(),
                       "resolved_steps": total_steps}
    path = write_checkpoint(out / CHECKPOINT_NAME, model_config=initial.model_config,
                            state_dict=state, prompt_features=initial.prompt_features,
                            prompt_pairs=initial.prompt_pairs, training_config=training_config,
                            metadata=metadata)
    if cfg.export_official and step == total_steps:
        write_official_checkpoint(out / OFFICIAL_NAME, state_dict=state,
                                  prompt_features=initial.prompt_features)
    return path
