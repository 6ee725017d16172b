"""Choosing the numeric precision of the image tower for fast inference.

``"fp32"`` is exact. ``"auto"`` picks fp16 autocast (AMP) on CUDA, and bf16 autocast on CPUs with
native bf16 matrix units (AMX or AVX512-BF16), where it was measured to keep scores within 0.01 of
fp32 (benchmarks/RESULTS.md); elsewhere fp32. The similarity and softmax always run in fp32
(see :meth:`qualiclip.model.QualiCLIP.pair_scores_from_features`).

The environment variable ``QUALICLIP_CPU_BF16`` overrides the bf16 detection: ``1`` treats the CPU
as having native bf16, ``0`` as not, unset (or empty) detects. It is read at every resolution, so
child processes (a FiftyOne App server, a CLI run) follow it by inheriting the environment. It
lets one machine reproduce what ``"auto"`` does on another (e.g. run the tests both ways).
"""

from __future__ import annotations

import contextlib
import os

import torch

from qualiclip.constants import PRECISIONS

#: Environment variable overriding :func:`cpu_has_fast_bf16`: ``1`` yes, ``0`` no, unset detects.
CPU_BF16_ENV = "QUALICLIP_CPU_BF16"


class PrecisionEnvError(ValueError):
    """``$QUALICLIP_CPU_BF16`` holds a value other than ``1``, ``0`` or nothing."""


def cpu_bf16_override() -> bool | None:
    """``$QUALICLIP_CPU_BF16`` parsed: True for ``1``, False for ``0``, None when unset or empty.

    Raises:
        PrecisionEnvError: any other value (one line, naming the variable and what to set).
    """
    raw = os.environ.get(CPU_BF16_ENV, "")
    value = raw.strip()
    if value == "":
        return None
    if value in ("0", "1"):
        return value == "1"
    raise PrecisionEnvError(f"${CPU_BF16_ENV} is {raw!r}; set it to 1 (use bf16 for precision "
                            f"'auto' on the CPU) or 0 (use fp32), or unset it to detect")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX tiles or AVX512-BF16), or
    when ``$QUALICLIP_CPU_BF16`` says so (``1``/``0`` overrides the detection).

    Raises:
        PrecisionEnvError: ``$QUALICLIP_CPU_BF16`` is set to something other than 1 or 0.
    """
    override = cpu_bf16_override()
    if override is not None:
        return override
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # private probes; absence just means "don't know"
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete ``"fp32" | "fp16" | "bf16"`` for ``device``.

    Raises:
        ValueError: unknown precision, or fp16 requested on CPU.
        PrecisionEnvError: ``"auto"`` on the CPU with a bad ``$QUALICLIP_CPU_BF16`` (a
            ValueError too).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    return precision


@contextlib.contextmanager
def _strict_fp32() -> contextlib.AbstractContextManager:
    """Disable TF32 on CUDA for the duration: "fp32" must mean exact fp32 scores."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (for fp32: no autocast, and no TF32)."""
    if precision == "fp32":
        return _strict_fp32() if device.type == "cuda" else contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
