"""``qualiclip-train``: the click command builds a :class:`TrainConfig` and calls :func:`train`.

Options are generated from the dataclass fields (name, type, default, help), so ``--help`` always
shows every option with its real default. The last line of standard output is the path of the
final checkpoint; everything else goes to standard error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import click
from qualiclip_train.config import ConfigError, TrainConfig, validate

_REQUIRED = {"pristine_dir", "output_dir"}


def _click_type(annotation: Any) -> Any:
    hint = annotation
    if isinstance(hint, str):  # postponed annotations: "int | None"
        hint = hint.replace(" | None", "")
        return {"int": int, "float": float, "str": str, "bool": bool}[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def _options(func: Any) -> Any:
    for f in reversed(dataclasses.fields(TrainConfig)):
        name = "--" + f.name.replace("_", "-")
        kind = _click_type(f.type)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            func = click.option(f"{name}/--no-{f.name.replace('_', '-')}", f.name,
                                default=f.default, show_default=True, help=help_text)(func)
        else:
            func = click.option(name, f.name, type=kind, default=f.default,
                                required=f.name in _REQUIRED,
                                show_default=f.default is not None and f.name not in _REQUIRED,
                                help=help_text)(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@_options
def main(**kwargs: Any) -> None:
    """Self-supervised QualiCLIP training on a folder of good images (no labels needed).

    Each image gives two overlapping crops, degraded identically at --levels increasing
    intensities; three margin ranking losses teach the image encoder that quality falls with
    the level. Writes OUTPUT_DIR/qualiclip-finetuned.pth, loadable with
    qualiclip.load_model(path), and prints its path as the last line.
    """
    cfg = TrainConfig(**kwargs)
    try:
        validate(cfg)
    except ConfigError as exc:
        if exc.option is not None:  # click's usual "Invalid value for '--lr': ..." line
            raise click.BadParameter(
                exc.detail, param_hint=f"'--{exc.option.replace('_', '-')}'") from exc
        raise click.UsageError(str(exc)) from exc
    from qualiclip_train.trainer import train

    from qualiclip.checkpoint import CheckpointError
    from qualiclip.weights import WeightsDownloadError

    try:
        path = train(cfg, validated=True)  # validated above: once per run, not twice
    except ConfigError as exc:  # found once the run's state is read (e.g. --resume mismatches)
        raise click.ClickException(str(exc)) from exc
    except (WeightsDownloadError, CheckpointError) as exc:  # --init weights: offline, corrupt
        raise click.ClickException(f"cannot load --init weights: {exc}") from exc
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0 only
        click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
