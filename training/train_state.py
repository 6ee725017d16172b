"""The resume record, ``OUTPUT_DIR/train_state.pt``: :class:`TrainState` with its own save/load.

On disk it is one ``torch.save`` dict (loadable with ``weights_only=True``): ``format`` and
``version`` first, then one key per field below, flat, so ``torch.load(path)["step"]`` works.

Version policy: :data:`VERSION` goes up whenever a field changes meaning or a required one is
added. :meth:`TrainState.load` reads every version up to its own, and refuses a newer one (or a
file of another format) with one line naming the file and what to do. Files written before the
record was versioned (no ``format``/``version`` key, same fields) read as version 0: supporting
them costs nothing, since version 1 only added the two keys. Their optional fields (``config``,
``world_size``, ``pristine``) may be missing; then the check they serve is skipped with a warning.

No RNG state is kept: crops, ladders, the data order and the held-out split come from
generators seeded by the configured seed and the step (see :mod:`training.data`), so the step
number is all a resumed run needs to draw the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from qualiclip_train.config import ConfigError, TrainConfig, resume_conflicts
from qualiclip_train.data import pristine_differences

from qualiclip.checkpoint import atomic_torch_save

log = logging.getLogger("qualiclip_train")

FORMAT = "qualiclip-train-state"
VERSION = 1
STATE_NAME = "train_state.pt"
#: Keys every version must hold; the others default (see the class).
REQUIRED = ("step", "total_steps", "visual", "optimizer", "scaler", "eval_history",
            "eval_before")


@dataclass
class TrainState:
    """Where a run stands after ``step`` optimizer steps of ``total_steps``.

    ``visual``/``optimizer``/``scaler``: the image tower's, AdamW's and the GradScaler's
    ``state_dict()``. ``eval_history``: one row per evaluation (``step``, ``srcc``,
    ``srcc_<group>``); ``eval_before``: the report before training. ``config``: the run's
    :meth:`TrainConfig.to_dict`, compared on resume; ``world_size``: its process count.
    ``pristine``: the fingerprint of the pristine set it started from, and
    ``pristine_changes``: what ``--allow-changed-pristine`` let through, and at which step.
    """

    step: int
    total_steps: int
    visual: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    eval_history: list[dict[str, Any]]
    eval_before: dict[str, Any] | None
    config: dict[str, Any] | None = None
    world_size: int | None = None
    pristine: dict[str, list[int]] | None = None
    pristine_changes: list[dict[str, Any]] = field(default_factory=list)
    version: int = VERSION

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash leaves the previous file whole), always as :data:`VERSION`."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "version"}
        return atomic_torch_save({"format": FORMAT, "version": VERSION, **fields}, path)

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        """Read a state written by any version up to :data:`VERSION`.

        Raises:
            ConfigError: one line naming ``path``, if it is unreadable, of another format, of a
                newer version, or lacks a required field.
        """
        path = Path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, pickle error, foreign file: all mean "corrupt"
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise ConfigError(f"--resume: {path} is corrupt or not a training state "
                              f"({type(exc).__name__}: {first}); start a new run with "
                              "--overwrite") from exc
        if not isinstance(raw, dict) or raw.get("format", FORMAT) != FORMAT:
            kind = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ConfigError(f"--resume: {path} is not a training state ({kind!r}); start a "
                              "new run with --overwrite")
        version = raw.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ConfigError(f"--resume: {path} has no valid format version ({version!r}); "
                              "start a new run with --overwrite")
        if version > VERSION:
            raise ConfigError(f"--resume: {path} is a training state of version {version}, "
                              f"newer than this qualiclip reads ({VERSION}); resume with the "
                              "qualiclip that wrote it, or start a new run with --overwrite")
        missing = [k for k in REQUIRED if k not in raw]
        if missing:
            raise ConfigError(f"--resume: {path} is not a complete training state (missing "
                              f"{', '.join(missing)}); start a new run with --overwrite")
        known = {f.name for f in dataclasses.fields(cls)} - {"version"}
        values = {k: v for k, v in raw.items() if k in known}
        values["pristine_changes"] = list(values.get("pristine_changes") or [])
        return cls(**values, version=version)

    def check_options(self, cfg: TrainConfig, world_size: int) -> None:
        """Refuse to continue this run under options that would change its result."""
        if self.config is None:  # written before configs were saved: nothing to compare
            log.warning("--resume: %s records no configuration; not checking options",
                        STATE_NAME)
            return
        conflicts = resume_conflicts(self.config, cfg)
        if self.world_size is not None and int(self.world_size) != world_size:
            conflicts.append(f"processes (GPUs): {self.world_size} -> {world_size}")
        if conflicts:
            raise ConfigError("--resume: these options differ from the run being resumed and "
                              "would change its result: " + "; ".join(conflicts) + ". Resume "
                              "with the original options, or start a new run in another "
                              "--output-dir")

    def check_pristine(self, now: dict[str, list[int]], cfg: TrainConfig) -> None:
        """Refuse to resume on a pristine set other than the run's fingerprint ``now`` unless
        ``--allow-changed-pristine`` (then record the changes in :attr:`pristine_changes`)."""
        if self.pristine is None:  # written before fingerprints were saved: nothing to compare
            log.warning("--resume: %s records no pristine file list; not checking it",
                        STATE_NAME)
            return
        changes = pristine_differences(self.pristine, now)
        if not changes:
            return
        if not cfg.allow_changed_pristine:
            raise ConfigError(f"--resume: --pristine-dir {cfg.pristine_dir} changed since the "
                              f"run started ({'; '.join(changes)}), which changes the held-out "
                              "split and the data order. Restore the files, or pass "
                              "--allow-changed-pristine to continue anyway (recorded)")
        log.warning("--resume: continuing on a changed pristine set (%s)", "; ".join(changes))
        self.pristine_changes.append({"step": int(self.step), "changes": changes})
