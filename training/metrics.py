"""Training metrics on disk: ``metrics.csv`` (one row per log interval), optional TensorBoard,
and the ``training_curves.png`` plot drawn from them at the end."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

METRICS_FIELDS = ("step", "loss", "l_pos", "l_neg", "l_cons", "lr", "images_per_s")


def truncate_metrics(path: Path, start_step: int) -> None:
    """Keep only rows up to ``start_step`` (a resumed run rewrites what came after)."""
    if start_step == 0 or not path.is_file():
        path.unlink(missing_ok=True)
        return
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= start_step]
    with path.open("w", newline="") as handle:
        w = csv.DictWriter(handle, fieldnames=METRICS_FIELDS)
        w.writeheader()
        w.writerows(rows)


def append_metrics(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        w = csv.DictWriter(handle, fieldnames=METRICS_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def tensorboard_writer(out: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def plot_curves(metrics_path: Path, history: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if metrics_path.is_file():
        with metrics_path.open() as handle:
            rows = list(csv.DictReader(handle))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [int(r["step"]) for r in rows]
    for key in ("loss", "l_pos", "l_neg", "l_cons"):
        axes[0].plot(steps, [float(r[key]) for r in rows], label=key)
    axes[0].set(title="training losses", xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [float(r["lr"]) for r in rows])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot([h["step"] for h in history], [h["srcc"] for h in history], "o-",
                 label="overall")
    for key in sorted({k for h in history for k in h if k.startswith("srcc_")}):
        axes[2].plot([h["step"] for h in history], [h.get(key, float("nan")) for h in history],
                     alpha=0.5, label=key[5:])
    axes[2].set(title="held-out SRCC(level, score), ideal -1", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
