"""What a training run is made of, and :func:`setup` that builds it: processes, the resume record,
data, model and optimizer. :func:`training.trainer.train` runs the loop over a :class:`Run`."""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from qualiclip_train.config import ConfigError, TrainConfig
from qualiclip_train.data import (
    PristineCrops,
    StepBatchSampler,
    find_images,
    load_held_out,
    pristine_fingerprint,
    readable_images,
    split_holdout,
)
from qualiclip_train.initial_model import (
    InitialModel,
    PromptSimilarity,
    initial_model,
    trainable_model,
)
from qualiclip_train.train_state import STATE_NAME, TrainState
from torch.utils.data import DataLoader

log = logging.getLogger("qualiclip_train")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


@dataclass
class Data:
    """The pristine images split for this run, and the fingerprint its record carries."""

    train_paths: list[Path]
    held_paths: list[Path]
    held_images: list[torch.Tensor]  # (3, H, W) uint8, on the main process only
    pristine: dict[str, list[int]] | None
    pristine_changes: list[dict[str, Any]]


@dataclass
class Run:
    """Everything :func:`setup` builds for the loop, and the progress a checkpoint saves."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    data: Data
    initial: InitialModel
    model: torch.nn.Module  # the QualiCLIP being trained; its image tower learns
    scorer: torch.nn.Module  # PromptSimilarity(model), DDP-wrapped with several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    pair_index: list[int]  # the prompt pairs the losses use
    train_bn: bool
    loader: DataLoader
    total_steps: int
    warmup: int
    base_lr: float
    start_step: int
    last_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_before: dict[str, Any] | None = None

    def state(self, step: int) -> TrainState:
        return TrainState(step=step, total_steps=self.total_steps, config=self.cfg.to_dict(),
                          world_size=self.dist.world_size,
                          visual=self.model.visual.state_dict(),
                          optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                          eval_history=self.history, eval_before=self.eval_before,
                          pristine=self.data.pristine,
                          pristine_changes=self.data.pristine_changes)


def setup(cfg: TrainConfig) -> Run:
    """Processes, resume record, data, model and optimizer, in an order that refuses a bad
    ``--resume`` before any weights are fetched."""
    dist, device = _setup_distributed(cfg)
    out = Path(cfg.output_dir).expanduser()
    if dist.main:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    else:
        log.setLevel(logging.WARNING)
    state = TrainState.load(out / STATE_NAME) if cfg.resume else None
    if state is not None:
        state.check_options(cfg, dist.world_size)
    data = load_data(cfg, dist, state)
    total_steps = resolve_steps(cfg, len(data.train_paths), dist.world_size)
    if state is not None and int(state.total_steps) != total_steps:
        raise ConfigError(f"--resume: the saved run has {state.total_steps} steps, this "
                          f"configuration {total_steps}; use the same --steps/--epochs")
    log.info("training on %d images (%d held out for evaluation), %d steps, device %s, "
             "%d process(es)", len(data.train_paths), len(data.held_paths), total_steps, device,
             dist.world_size)

    initial = _fetch_initial(cfg, dist)
    # Created only now, once the options, the images and the starting weights have passed: a
    # refused run leaves no empty folder behind (validation only probes that it can be made).
    out.mkdir(parents=True, exist_ok=True)
    model = trainable_model(initial).to(device)
    params = [p for p in model.visual.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.peak_lr(), weight_decay=cfg.weight_decay)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_step = 0
    if state is not None:
        model.visual.load_state_dict(state.visual)
        optimizer.load_state_dict(state.optimizer)
        scaler.load_state_dict(state.scaler)
        start_step = int(state.step)
        log.info("resuming at step %d of %d", start_step, total_steps)
    scorer: torch.nn.Module = PromptSimilarity(model)
    if dist.world_size > 1:
        scorer = torch.nn.parallel.DistributedDataParallel(
            scorer, device_ids=[device.index] if device.type == "cuda" else None)

    last_step = total_steps if cfg.stop_after is None else min(total_steps,
                                                               start_step + cfg.stop_after)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * total_steps)
    pair_index = list(range(len(initial.prompt_pairs))) if cfg.prompts == "all" else [0]
    return Run(cfg=cfg, dist=dist, device=device, out=out, data=data, initial=initial,
               model=model, scorer=scorer, optimizer=optimizer, scaler=scaler,
               amp_dtype=amp_dtype, pair_index=pair_index,
               train_bn=cfg.train_bn or cfg.init == "random",  # random BN statistics mean nothing
               loader=_loader(cfg, data, dist, device, start_step, total_steps),
               total_steps=total_steps, warmup=warmup, base_lr=cfg.peak_lr(),
               start_step=start_step, last_step=last_step,
               history=list(state.eval_history) if state is not None else [],
               eval_before=state.eval_before if state is not None else None)


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


def load_data(cfg: TrainConfig, dist: Dist, state: TrainState | None) -> Data:
    """List, fingerprint (checked against ``state``'s), split and read the held-out images."""
    found = find_images(cfg.pristine_dir)
    pristine = pristine_fingerprint(cfg.pristine_dir, found)
    if state is not None:
        state.check_pristine(pristine, cfg)
        if state.pristine is None:  # a run that never recorded one stays unchecked
            pristine = None
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
    changes = list(state.pristine_changes) if state is not None else []
    return Data(train_paths, held_paths, held_images, pristine, changes)


def _fetch_initial(cfg: TrainConfig, dist: Dist) -> InitialModel:
    """``--init`` weights. One process per machine fetches them into the cache (LOCAL_RANK 0
    goes first, the others then find the file), instead of every process downloading them."""
    local_first = os.environ.get("LOCAL_RANK", "0") == "0"
    if not local_first:
        dist.barrier()
    initial = initial_model(cfg.init, cfg.arch, cfg.seed)
    if local_first:
        dist.barrier()
    if initial.license:
        log.info("starting from %s; licence: %s", initial.source, initial.license)
    return initial


def _loader(cfg: TrainConfig, data: Data, dist: Dist, device: torch.device, start_step: int,
            total_steps: int) -> DataLoader:
    sampler = StepBatchSampler(len(data.train_paths), cfg.batch_size, cfg.seed,
                               start=start_step * cfg.accum_steps,
                               stop=total_steps * cfg.accum_steps,
                               rank=dist.rank, world_size=dist.world_size)
    workers = cfg.loader_workers()
    in_workers = cfg.degrade_on == "workers" or (cfg.degrade_on == "auto" and workers > 0)
    dataset = PristineCrops(data.train_paths, cfg.crop_size,
                            levels=cfg.levels if in_workers else None,
                            max_distortions=cfg.max_distortions)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda")


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
