"""``TrainConfig``: every training option, its default and why, in one dataclass.

The CLI (:mod:`training.cli`) builds its options from these fields (name, type, default and the
``help`` metadata), so the two can never disagree. Defaults marked "by experiment" were picked
with the runs recorded in docs/training.md ("Defaults and why").
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qualiclip.constants import IMAGE_EXTENSIONS
from qualiclip.files import image_files
from qualiclip.weights import WEIGHTS_ENV, is_url, which_weights

INIT_CHOICES = ("qualiclip", "openai", "random")
PROMPT_CHOICES = ("all", "good_photo")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DEGRADE_CHOICES = ("auto", "workers", "device")


def _opt(help_text: str, **extra: Any) -> Any:
    return {"help": help_text, **extra}


@dataclass
class TrainConfig:
    """Self-supervised QualiCLIP training. See each field's ``help`` metadata."""

    pristine_dir: str = field(default="", metadata=_opt(
        "Folder of good-quality images (searched recursively; jpg, png, webp, tiff, bmp, ...)."))
    output_dir: str = field(default="", metadata=_opt(
        "Where checkpoints, metrics.csv, eval.json and training_curves.png go."))
    init: str | None = field(default=None, metadata=_opt(
        "Starting weights: 'qualiclip' (official release, fine-tune; CC BY-NC 4.0), 'openai' "
        "(OpenAI CLIP RN50 via open_clip download, the paper's setting), 'random' (needs "
        "--arch), or a checkpoint (either format) path or URL. [default: $QUALICLIP_WEIGHTS "
        "if set, else qualiclip: the weights scoring uses by default]"))
    arch: str | None = field(default=None, metadata=_opt(
        "Architecture for --init random: an open_clip ResNet model name (RN50, ...), a "
        "registered config (tiny-test-rn) or a JSON model-config file."))
    steps: int | None = field(default=None, metadata=_opt(
        "Optimizer steps to train (default 2000 unless --epochs is given)."))
    epochs: float | None = field(default=None, metadata=_opt(
        "Train for this many passes over the training images instead of --steps."))
    batch_size: int = field(default=8, metadata=_opt(
        "Pristine images per micro-batch per process; each gives 2 crops x --levels images."))
    accum_steps: int = field(default=1, metadata=_opt(
        "Micro-batches accumulated per optimizer step (effective batch = batch x accum x GPUs)."))
    lr: float | None = field(default=None, metadata=_opt(
        "Peak learning rate (AdamW). Default: 5e-6 when starting from pretrained weights "
        "(CLIP fine-tuning wants 1e-6..1e-5), 1e-3 for --init random."))
    weight_decay: float = field(default=0.01, metadata=_opt("AdamW weight decay."))
    warmup_steps: int | None = field(default=None, metadata=_opt(
        "Linear warmup steps (default 5% of the steps)."))
    min_lr_ratio: float = field(default=0.1, metadata=_opt(
        "Cosine schedule ends at this fraction of the peak learning rate."))
    levels: int = field(default=5, metadata=_opt(
        "Degradation levels L per ladder (5 = the published KADID levels)."))
    crop_size: int = field(default=224, metadata=_opt(
        "Side of the two square crops (224 = CLIP RN50's training size)."))
    max_distortions: int = field(default=4, metadata=_opt(
        "Each image gets 1..N distortions from distinct groups (ARNIQA's rule: 4)."))
    margin: float = field(default=0.05, metadata=_opt(
        "Margin m of L_pos and L_neg on cosine similarities (by experiment)."))
    consistency_weight: float = field(default=0.1, metadata=_opt(
        "lambda: weight of the crop-consistency loss L_cons (by experiment)."))
    consistency_tolerance: float = field(default=0.0, metadata=_opt(
        "Similarity gap between the two crops tolerated before L_cons applies."))
    adjacent_only: bool = field(default=False, metadata=_opt(
        "Rank only adjacent levels (l, l+1) instead of all pairs i < j (by experiment)."))
    prompts: str = field(default="all", metadata=_opt(
        "Prompt pairs the losses use: 'all' 7 pairs or only 'good_photo' (by experiment)."))
    train_bn: bool = field(default=False, metadata=_opt(
        "Update BatchNorm statistics (default: frozen, as small batches make them noisy)."))
    val_images: int = field(default=16, metadata=_opt(
        "Pristine images held out (never trained on) for the degradation-ranking evaluation."))
    eval_every: int = field(default=500, metadata=_opt(
        "Evaluate on the held-out ladders every N steps (0: only before and after)."))
    checkpoint_every: int = field(default=500, metadata=_opt(
        "Write the resumable state and the checkpoint every N steps (atomically)."))
    log_every: int = field(default=20, metadata=_opt("One log line every N steps."))
    device: str = field(default="auto", metadata=_opt(
        "'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ... (torchrun sets the GPU)."))
    amp: str = field(default="auto", metadata=_opt(
        "Mixed precision on CUDA: auto (bf16 if supported, else fp16), bf16, fp16, off."))
    workers: int | None = field(default=None, metadata=_opt(
        "Data-loading worker processes (default: 4, or the usable CPU cores if fewer; torch "
        "warns about more workers than cores)."))
    degrade_on: str = field(default="auto", metadata=_opt(
        "Where crops are degraded: 'workers' (CPU, in parallel in the data loaders), 'device' "
        "(the training device, in the main process) or 'auto' (workers when --workers > 0). "
        "Both draw the same distortions and levels; on a GPU, 'device' takes the random parts "
        "(noise, patch positions) from CUDA's generator, so those pixels differ."))
    seed: int = field(default=0, metadata=_opt(
        "Seed of crops, ladders, held-out split and random init: same seed, same run."))
    resume: bool = field(default=False, metadata=_opt(
        "Continue from OUTPUT_DIR/train_state.pt exactly where the last run stopped."))
    overwrite: bool = field(default=False, metadata=_opt(
        "Start a new run in an --output-dir that already holds a run (a checkpoint or a "
        "training state), replacing it. Without it, or --resume, such a folder is refused."))
    allow_changed_pristine: bool = field(default=False, metadata=_opt(
        "With --resume: continue although files in --pristine-dir were added, removed or "
        "changed since the run started (the changes are recorded in the state and checkpoint)."))
    stop_after: int | None = field(default=None, metadata=_opt(
        "Stop cleanly after N steps in this invocation (for time-limited job slots; --resume "
        "continues)."))
    export_official: bool = field(default=False, metadata=_opt(
        "Also write the authors' flat format (qualiclip-finetuned-official.pth)."))
    tensorboard: bool = field(default=False, metadata=_opt(
        "Also log to TensorBoard in OUTPUT_DIR/tb (needs the tensorboard package)."))
    progress: bool = field(default=True, metadata=_opt("Show a progress bar."))

    def __post_init__(self) -> None:
        # No --init means the default weights, chosen by the library's one rule. Resolved here,
        # once, so validation, the saved config, the --resume check and the checkpoint's
        # metadata all name the weights the run really started from.
        self.init = which_weights(self.init)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Derived values: the dataclass keeps what the user asked for, these resolve the defaults.
    def loader_workers(self) -> int:
        """``--workers``, or by default 4 capped at the usable cores (never 0: the degradation
        then stays in the workers on every machine, so a run resumed elsewhere with the default
        degrades its crops the same way)."""
        if self.workers is not None:
            return self.workers
        from qualiclip.inference import usable_cpus

        return min(4, usable_cpus())

    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.init == "random" else 5e-6


class ConfigError(ValueError):
    """A bad option; the message says which and what is allowed.

    ``option`` (a field name such as ``"lr"``) is set when one option alone is wrong; the
    message is then ``--option <detail>``, and ``detail`` is what click's ``BadParameter``
    shows after the option's name.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        flag = f"--{option.replace('_', '-')} " if option else ""
        self.detail = message[len(flag):] if flag and message.startswith(flag) else message


#: The allowed range of each numeric option, as ``(lowest, highest, lowest allowed?)``; every
#: value must also be finite (``nan`` passes every comparison, ``inf``/``1e308`` overflow the
#: update). Upper bounds are far beyond any useful setting: they catch typos (``--lr 5`` for
#: ``5e-6``) before an output folder is made or a weight is fetched.
NUMBER_RANGES: dict[str, tuple[float, float, bool]] = {
    "steps": (0, 10**9, False), "epochs": (0, 10**6, False),
    "batch_size": (0, 4096, False), "accum_steps": (0, 65536, False),
    # AdamW: a step of lr is already the whole scale of a unit-norm weight.
    "lr": (0, 1, False),
    # AdamW scales weights by 1 - lr * weight_decay each step: above 1 it can flip their sign.
    "weight_decay": (0, 1, True), "warmup_steps": (0, 10**9, True),
    "min_lr_ratio": (0, 1, True),
    # A ranking needs two levels; the ResNet downsamples by 32.
    "levels": (2, 64, True), "crop_size": (32, 4096, True), "max_distortions": (1, 64, True),
    # Margins and tolerances are on cosine similarities, whose differences lie in [-2, 2].
    "margin": (0, 2, True), "consistency_tolerance": (0, 2, True),
    "consistency_weight": (0, 10**6, True),
    "val_images": (0, 10**9, True), "eval_every": (0, 10**9, True),
    "checkpoint_every": (0, 10**9, True), "log_every": (0, 10**9, False),
    "workers": (0, 1024, True), "seed": (0, 2**63 - 1, True), "stop_after": (0, 10**9, False),
}


def _check_numbers(cfg: TrainConfig) -> None:
    """Refuse a numeric option that is NaN, infinite or out of :data:`NUMBER_RANGES`."""
    import math

    for name, (low, high, closed) in NUMBER_RANGES.items():
        value = getattr(cfg, name)
        if value is None:  # an optional option left to its default
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float):
            allowed = f"a finite number in {'[' if closed else '('}{low:g}, {high:g}]"
        else:
            allowed = f"a whole number in {low if closed else low + 1}..{high}"
        if not (math.isfinite(value) and (low <= value if closed else low < value)
                and value <= high):
            raise ConfigError(f"{flag} must be {allowed}, got {value}", option=name)



#: Options a ``--resume`` may change: they affect logging, speed or where the work runs, not
#: which images are seen or how the weights are updated. Every other option must match.
RESUME_MAY_CHANGE = frozenset({
    "resume", "stop_after", "progress", "workers", "degrade_on", "device", "amp", "tensorboard",
    "log_every", "eval_every", "checkpoint_every", "export_official", "output_dir",
    "overwrite", "allow_changed_pristine",
})

#: Files that mark a folder as holding a run: a new run there would replace them.
RUN_FILES = ("train_state.pt", "qualiclip-finetuned.pth", "eval.json")

def resume_conflicts(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``--option: saved -> now`` for each option that differs from the run being resumed and
    would change its result (a different seed, say, changes the data order and the held-out
    split). Folders compare by their resolved paths."""
    now = cfg.to_dict()
    conflicts = []
    for name, value in now.items():
        if name in RESUME_MAY_CHANGE or name not in saved:
            continue
        before = saved[name]
        if name == "pristine_dir":
            before, value = str(Path(before).expanduser().resolve()), str(
                Path(value).expanduser().resolve())
        if before != value:
            conflicts.append(f"--{name.replace('_', '-')}: {saved[name]!r} -> {now[name]!r}")
    return conflicts


def check_model_config(config: Any, source: str) -> None:
    """Refuse a model config that is not a dict of sane sizes, text tower included
    (:func:`qualiclip.architecture.check_model_config`).

    Raises:
        ConfigError: one line naming ``source`` and the bad entry.
    """
    from qualiclip.architecture import ModelConfigError
    from qualiclip.architecture import check_model_config as check

    try:
        check(config, source, require_text=True)
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from exc


def validate(cfg: TrainConfig) -> None:
    """Check every option before any work starts.

    Raises:
        ConfigError: with a message naming the option.
    """
    _check_numbers(cfg)
    if cfg.steps is not None and cfg.epochs is not None:
        raise ConfigError("give either --steps or --epochs, not both")
    if cfg.prompts not in PROMPT_CHOICES:
        raise ConfigError(f"--prompts must be one of {PROMPT_CHOICES}, got {cfg.prompts!r}")
    if cfg.degrade_on not in DEGRADE_CHOICES:
        raise ConfigError(f"--degrade-on must be one of {DEGRADE_CHOICES}, got "
                          f"{cfg.degrade_on!r}")
    if cfg.amp not in AMP_CHOICES:
        raise ConfigError(f"--amp must be one of {AMP_CHOICES}, got {cfg.amp!r}")
    if (cfg.init not in INIT_CHOICES and not is_url(cfg.init)
            and not Path(cfg.init).expanduser().is_file()):
        from_env = cfg.init == os.environ.get(WEIGHTS_ENV, "").strip()
        origin = f" (from ${WEIGHTS_ENV})" if from_env else ""
        raise ConfigError(f"--init must be one of {INIT_CHOICES}, an existing checkpoint file "
                          f"or a URL; {cfg.init!r}{origin} is neither")
    if cfg.init == "random" and not cfg.arch:
        raise ConfigError("--init random needs --arch (e.g. RN50, tiny-test-rn or a JSON file)")
    if cfg.arch and cfg.init != "random":
        raise ConfigError("--arch only applies to --init random (other inits carry their own "
                          "architecture)")
    if cfg.arch:
        from qualiclip.architecture import resolve_model_config

        try:
            config = resolve_model_config(cfg.arch)
        except (ValueError, OSError, AttributeError, TypeError) as exc:
            # AttributeError/TypeError: a JSON file holding a string or list, not an object.
            raise ConfigError(f"--arch {cfg.arch}: not a usable model config ({exc})") from exc
        check_model_config(config, f"--arch {cfg.arch}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    _check_pristine(cfg.pristine_dir)
    _check_output(cfg.output_dir, cfg.resume, cfg.overwrite)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install "
                              "tensorboard")


def _check_pristine(folder: str) -> None:
    if not folder:
        raise ConfigError("--pristine-dir is required")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--pristine-dir {folder}: no such folder")
    if not image_files(path):
        raise ConfigError(f"--pristine-dir {folder}: no images found (looked recursively for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})")


def _check_output(folder: str, resume: bool, overwrite: bool) -> None:
    if not folder:
        raise ConfigError("--output-dir is required")
    path = Path(folder).expanduser()
    # Probe the folder, or the nearest folder above it that exists, without creating anything:
    # the run creates --output-dir once every option and the starting weights have passed, so
    # a refused run leaves no empty folder behind.
    existing_dir = path
    while not existing_dir.exists() and existing_dir != existing_dir.parent:
        existing_dir = existing_dir.parent
    if not existing_dir.is_dir():
        raise ConfigError(f"--output-dir {folder} is not writable: {existing_dir} is a file",
                          option="output_dir")
    try:
        fd, probe = tempfile.mkstemp(dir=existing_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--output-dir {folder} is not writable: {exc}",
                          option="output_dir") from exc
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --output-dir, --overwrite replaces it: "
                          "give one of them")
    if resume and not (path / "train_state.pt").is_file():
        raise ConfigError(f"--resume: {path / 'train_state.pt'} not found; nothing to resume")
    existing = [name for name in RUN_FILES if (path / name).is_file()]
    if existing and not (resume or overwrite):
        raise ConfigError(f"--output-dir {folder} already holds a run ({', '.join(existing)}); "
                          "continue it with --resume, replace it with --overwrite, or choose "
                          "another folder")
