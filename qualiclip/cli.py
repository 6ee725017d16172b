"""The ``qualiclip`` command line: ``score``, ``download``, ``info``, ``calibrate``,
``convert-pyiqa``.

Other packages of this project add sub-commands (``eval``, ``sensitivity``, ``plugin``) through
the ``qualiclip.commands`` entry-point group, so this module never imports them: dependencies
point ``training -> qualiclip <- qualiclip_plugin``. The library's own ``report`` command is
registered there too, so its imports wait until it runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

import click

from qualiclip import __version__
from qualiclip.constants import BACKENDS, PRECISIONS, VIDEO_EXTENSIONS
from qualiclip.files import image_entries, spreadsheet_safe, video_files

ENTRY_POINT_GROUP = "qualiclip.commands"


class _ExtensibleGroup(click.Group):
    """A click group that also lists commands registered under ``qualiclip.commands``,
    importing each only when it is run (keeps ``qualiclip --help`` fast)."""

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except ImportError as exc:
            # An optional part that is not installed (the plugin's commands without FiftyOne):
            # `qualiclip --help` still lists it, and running it prints the reason in one line.
            return _unavailable_command(name, (str(exc).strip().splitlines() or [repr(exc)])[0])


def _unavailable_command(name: str, reason: str) -> click.Command:
    """A stand-in for a contributed sub-command whose module cannot be imported: any arguments
    (``--help`` included) end in ``Error: <reason>`` and exit status 1."""

    def fail(args: tuple[str, ...]) -> None:
        raise click.ClickException(reason)

    return click.Command(
        name, callback=fail, params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        add_help_option=False, short_help="(unavailable: run it to see what to install)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=_ExtensibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qualiclip")
def main() -> None:
    """QualiCLIP image quality assessment (scores in [0, 1], higher is better).

    The official weights are CC BY-NC 4.0 (non-commercial); they are downloaded on first use.
    Without --weights, every command uses $QUALICLIP_WEIGHTS if set, else the official weights
    (docs/scoring.md, "Which weights").
    """


def collect_images(paths: Iterable[str], recursive: bool, videos: bool = False) -> list[Path]:
    """Files given explicitly (whatever their extension) plus the entries named like images
    inside folders (by extension; sub-folders only with ``recursive``), sorted per folder,
    without duplicates. Image-named entries that cannot be read (dangling symlinks, symlink
    loops, folders) are kept: each becomes an error row (:func:`qualiclip.files.image_entries`).
    With ``videos``, folders also yield their video files (:func:`qualiclip.files.video_files`)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = image_entries(path, recursive)
            if videos:
                candidates = sorted(candidates + video_files(path, recursive))
        else:
            candidates = [path]  # a missing file becomes an error row, not a crash
        for candidate in candidates:
            if candidate not in seen:
                seen.add(candidate)
                found.append(candidate)
    return found


def load_model_or_fail(weights: str | None, device, expected_sha256: str | None = None,
                       progress: bool = True):
    """``qualiclip.load_model`` for a command line (``score``, ``eval``, ``sensitivity``):
    weights that cannot be loaded (missing, corrupt, a failed download) or an unusable device
    end the command with one line saying which, instead of a traceback. ``weights=None``: the
    default weights (``$QUALICLIP_WEIGHTS``, else the official ones)."""
    from qualiclip.loading import load_model
    from qualiclip.weights import WeightsDownloadError

    try:
        return load_model(weights, device=device, expected_sha256=expected_sha256,
                          progress=progress)
    except (WeightsDownloadError, OSError, ValueError) as exc:  # CheckpointError: a ValueError
        raise click.ClickException(" ".join(f"cannot load weights: {exc}".split())) from exc
    except RuntimeError as exc:  # e.g. an unavailable CUDA device
        raise click.ClickException(
            " ".join(f"cannot use device {str(device)!r}: {exc}".split())) from exc


def finite_row(row: dict) -> dict:
    """``row`` with NaN / inf values replaced by ``None``: neither is a score, and JSON has no
    spelling for them (``NaN`` is a Python extension other parsers reject)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}


def _writer(output: Path | None, columns: list[str]):
    """Return ``(write_row, close)`` for CSV (default, also stdout) or JSON Lines (.jsonl).
    Rows should have passed :func:`finite_row`; JSON output refuses NaN rather than write it.
    CSV text cells starting with ``= + - @``, a tab or a carriage return get a leading ``'``
    (:func:`qualiclip.files.spreadsheet_safe`)."""
    handle = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
    if output is not None and output.suffix.lower() in (".jsonl", ".ndjson"):
        def write_row(row: dict) -> None:
            handle.write(json.dumps(row, allow_nan=False) + "\n")
    else:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()

        def write_row(row: dict) -> None:
            # Text cells a spreadsheet would run as formulas get a leading quote; JSON Lines
            # above stay exact, as no spreadsheet opens them.
            writer.writerow({k: ("" if v is None else spreadsheet_safe(v))
                             for k, v in row.items()})

    def close() -> None:
        if handle is not sys.stdout:
            handle.close()
    return write_row, close


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Also score images in sub-folders.")
@click.option("-o", "--output", default=None, metavar="FILE|OUT_DIR",
              help="Write results to this .csv or .jsonl file (default: CSV on standard output); "
                   "with --engine ray, the folder or URI of the Parquet dataset (required).")
@click.option("--weights", default=None, metavar="NAME|PATH|URL",
              help="Registered name, local .pth checkpoint, or URL. [default: "
                   "$QUALICLIP_WEIGHTS if set, else qualiclip (the official weights)]")
@click.option("--device", default=None, help="cuda, cuda:1, cpu ... [default: cuda if available]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most images per batch (a pixel budget also bounds batches).")
@click.option("--max-side", type=click.IntRange(min=32), default=None,
              help="Downscale so the longer side is at most this many px. [default: native "
                   "resolution, as the official protocol]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes. [default: half the usable cores; 0 for a few images, or on "
                   "a CPU of <= 2 cores]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto = fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32; "
                   "fp32 = exact scores.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="What runs the model: auto = ONNX Runtime for fp32 on the CPU when "
                   "installed (same scores, 1.1-1.6x torch), else torch; onnxruntime needs "
                   "'pip install \"qualiclip[cpu-fast]\"'.")
@click.option("--sha256", "expected_sha256", default=None,
              help="Refuse weights whose SHA-256 differs from this.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local = this process; ray = Ray Data actors, on this machine or a cluster, "
                   "writing a Parquet dataset to -o OUT_DIR and resuming into it "
                   "(docs/scale.md; needs 'pip install \"qualiclip[ray]\"').")
@click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
              help="--engine ray: the cluster to join. [default: $RAY_ADDRESS, else a local "
                   "Ray instance]")
@click.option("--actors", default="1", show_default=True, metavar="N|MIN-MAX",
              help="--engine ray: scoring actors (each loads the model once); MIN-MAX "
                   "autoscales.")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0,
              show_default=True, help="--engine ray: GPUs per actor (0 = CPU; 0.5 = two "
                                      "actors share a GPU).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1,
              show_default=True, help="--engine ray: CPU cores reserved per actor (torch "
                                      "uses that many threads).")
@click.option("--fps", "fps_text", default="1", show_default=True, metavar="N|all",
              help="Video files: frames per second to score (the frames shown at 0, 1/N, 2/N "
                   "... s), or 'all' for every frame.")
@click.option("--segment", type=click.FloatRange(min=0, min_open=True), default=3.0,
              show_default=True, metavar="SECONDS",
              help="Video files: length of the worst segment in each video's summary.")
@click.option("--rows-per-block", type=click.IntRange(min=1), default=256, show_default=True,
              help="--engine ray: inputs per Ray batch and per Parquet part (a killed job "
                   "loses at most one block per actor).")
def score(paths, recursive, output, weights, device, batch_size, max_side, workers, precision,
          backend, expected_sha256, no_progress, engine, address, actors, num_gpus_per_worker,
          cpus_per_worker, rows_per_block, fps_text, segment) -> None:
    """Score image and video files and folders; one row per image or sampled video frame, then
    a summary line on stderr.

    Columns: path, score, the 7 pair scores, width, height, error. Exits 0 when the run
    completed even if some files could not be read (their rows carry the error; broken
    symlinks and folders named like images included). CSV text cells starting with = + - @
    get a leading ' so spreadsheets do not run them as formulas (JSON Lines stay exact).

    With --engine ray, PATHS may also be globs, s3:// gs:// file:// URIs and WebDataset .tar
    shards, and the result is a Parquet dataset in OUT_DIR (the columns above plus
    weights_sha256 and preprocessing); a rerun into OUT_DIR scores only what is missing.

    Video files (.mp4, .mov, .mkv, .webm, .avi ...; needs 'pip install "qualiclip[video]"')
    get one row per sampled frame (--fps), with the columns frame (0-based, presentation order)
    and timestamp (seconds); an undecodable video or packet is an error row. One summary row
    per video (frames, failed, mean, p10, min, the worst --segment's start, end and mean) goes
    to OUTPUT.videos.csv (or .videos.jsonl) beside -o, or to stderr without -o.
    """
    if engine == "ray":
        _score_with_ray(paths, recursive, output, weights, device, batch_size, max_side,
                        precision, backend, expected_sha256, no_progress, address, actors,
                        num_gpus_per_worker, cpus_per_worker, rows_per_block)
        return
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise click.BadParameter(f"{output} is a folder; give a .csv or .jsonl file name",
                                     param_hint="--output")
    import torch

    from qualiclip.backends import BackendUnavailableError
    from qualiclip.backends.selection import resolve_backend
    from qualiclip.inference import Preprocessing
    from qualiclip.loading import default_device
    from qualiclip.precision import PrecisionEnvError
    from qualiclip.scoring import iter_scores

    fps = _parse_fps(fps_text)
    found = collect_images(paths, recursive, videos=True)
    videos = [p for p in found if p.suffix.lower() in VIDEO_EXTENSIONS]
    images = [p for p in found if p.suffix.lower() not in VIDEO_EXTENSIONS]
    if videos:
        from qualiclip.video import VideoDecoderMissing, require_av

        try:
            require_av()
        except VideoDecoderMissing as exc:
            raise click.ClickException(f"{videos[0]}: {exc}") from exc
    # A symlink counts as found even when broken: it gets an error row saying so.
    if not any(p.exists() or p.is_symlink() for p in found):
        missing = [p for p in paths if not Path(p).exists()]
        if len(missing) == len(paths):
            raise click.UsageError(f"no such file or folder: {', '.join(missing)}")
        hint = "" if recursive else " (use -r to search sub-folders)"
        raise click.UsageError(f"no images found in {', '.join(paths)}{hint}")
    if output is not None and not output.parent.exists():
        raise click.BadParameter(f"folder {output.parent} does not exist", param_hint="--output")
    try:  # before the weights, which may mean a download; resolved once, used below
        target = torch.device(device or default_device())
        backend, precision = resolve_backend(backend, precision, target)
    except BackendUnavailableError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    except PrecisionEnvError as exc:  # the environment, not an option, is wrong
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        hint = "--backend" if "backend" in str(exc) else "--precision"
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    except RuntimeError as exc:  # a malformed device string
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    model = load_model_or_fail(weights, target, expected_sha256=expected_sha256,
                               progress=not no_progress)

    setup = Preprocessing(max_side=max_side, precision=precision,
                          device=str(next(model.parameters()).device), backend=backend)
    info = setup.describe(model.weights_info)
    click.echo(f"weights {info['weights']} (SHA-256 {str(info['weights_sha256'])[:12]}...), "
               f"{info['resize']}, precision {info['precision']} on {info['device']} "
               f"({info['backend']})", err=True)
    if model.weights_info.get("license"):  # weights under terms other than the official ones
        click.echo(f"weights licence: {model.weights_info['license']}", err=True)
    if output is not None:  # the full record beside the table, for whoever reads it later
        meta = output.with_name(output.name + ".preprocessing.json")
        meta.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    names = list(model.PAIR_NAMES)
    columns = ["path", "score", *names, "width", "height", "error"]
    if videos:
        columns[1:1] = ["frame", "timestamp"]
    write_row, close = _writer(output, columns)
    scored = failed = 0
    total = 0.0
    try:
        results = (iter_scores(images, model=model, batch_size=batch_size,
                               num_workers=workers, max_side=max_side, precision=precision,
                               backend=backend, progress=not no_progress) if images else [])
        for result in results:
            row = finite_row(result.to_row(names))  # the engine never scores NaN; guard anyway
            if videos:
                row = {"path": row["path"], "frame": None, "timestamp": None, **row}
            scored, failed, total = _count_written(write_row, row, (scored, failed, total))
        if videos:
            counts = _score_videos(videos, model, names, write_row, output, fps, segment,
                                   batch_size, max_side, precision, backend, no_progress)
            scored, failed, total = scored + counts[0], failed + counts[1], total + counts[2]
    finally:
        close()
    mean = f"{total / scored:.4f}" if scored else "n/a"
    where = f" -> {output}" if output else ""
    click.echo(f"scored {scored}, failed {failed}, mean {mean}{where}", err=True)


def _count_written(write_row, row: dict,
                   counts: tuple[int, int, float]) -> tuple[int, int, float]:
    """Write ``row``; returns ``counts`` (scored, failed, sum of scores) with the row added."""
    write_row(row)
    scored, failed, total = counts
    if row["score"] is None:
        return scored, failed + 1, total
    return scored + 1, failed, total + row["score"]


def _parse_fps(text: str) -> float | None:
    """``--fps``: a positive number of frames per second, or ``all`` (every frame: ``None``)."""
    if text.strip().lower() in ("all", "every"):
        return None
    try:
        fps = float(text)
    except ValueError:
        fps = math.nan
    if not (math.isfinite(fps) and fps > 0):
        raise click.BadParameter(f"{text!r}: give frames per second (like 1 or 0.5), or 'all'",
                                 param_hint="--fps")
    return fps


def _score_videos(videos, model, names, write_row, output, fps, segment, batch_size, max_side,
                  precision, backend, no_progress) -> tuple[int, int, float]:
    """The video part of ``qualiclip score``: per-frame rows through ``write_row``, one summary
    row per video to ``OUTPUT.videos.<ext>`` (or stderr). Returns (scored, failed, score sum)."""
    from qualiclip.video import VideoSummary, iter_video_scores, summaries

    scored = failed = 0
    total = 0.0
    summary_columns = list(VideoSummary("").to_row())
    if output is not None:
        suffix = ".jsonl" if output.suffix.lower() in (".jsonl", ".ndjson") else ".csv"
        summary_path = output.with_name(output.name + ".videos" + suffix)
        write_summary, close_summary = _writer(summary_path, summary_columns)
    else:
        summary_path = None

        def write_summary(row: dict) -> None:
            shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()
                     if v is not None and k != "path"}
            click.echo(f"video {row['path']}: " + ", ".join(f"{k} {v}" for k, v in shown.items()),
                       err=True)

        def close_summary() -> None:
            pass
    try:
        results = iter_video_scores(videos, model=model, fps=fps, batch_size=batch_size,
                                    max_side=max_side, precision=precision, backend=backend,
                                    progress=not no_progress)
        for result, summary in summaries(results, segment):
            row = finite_row(result.to_row(names))
            scored, failed, total = _count_written(write_row, row, (scored, failed, total))
            if summary is not None:
                write_summary(finite_row(summary.to_row()))
    finally:
        close_summary()
    if summary_path is not None:
        click.echo(f"{len(videos)} video summaries -> {summary_path}", err=True)
    return scored, failed, total


def _parse_actors(text: str) -> int | tuple[int, int]:
    """``--actors``: ``N`` or ``MIN-MAX`` (1 <= MIN <= MAX)."""
    try:
        low, _, high = text.partition("-")
        low_n, high_n = int(low), int(high or low)
    except ValueError:
        low_n = high_n = 0
    if not 1 <= low_n <= high_n:
        raise click.BadParameter(f"{text!r}: give a count like 4, or a range like 2-8",
                                 param_hint="--actors")
    return low_n if not high else (low_n, high_n)


def _score_with_ray(paths, recursive, output, weights, device, batch_size, max_side, precision,
                    backend, expected_sha256, no_progress, address, actors, num_gpus_per_worker,
                    cpus_per_worker, rows_per_block) -> None:
    """``qualiclip score --engine ray``: Ray Data actors -> a Parquet dataset in ``output``,
    resuming into it (:func:`qualiclip.ray.score_to_parquet`)."""
    if output is None:
        raise click.UsageError("--engine ray writes a Parquet dataset: give its folder with "
                               "-o OUT_DIR")
    pool = _parse_actors(actors)
    try:
        import ray
    except ImportError as exc:
        raise click.ClickException("--engine ray needs Ray Data: pip install "
                                   "\"qualiclip[ray]\"") from exc
    import qualiclip.ray as qray
    from qualiclip.weights import which_weights

    try:
        inputs = qray.list_inputs(paths, recursive)
    except (FileNotFoundError, OSError) as exc:
        raise click.UsageError(" ".join(str(exc).split())) from exc
    if not inputs.files and not inputs.shards:
        raise click.UsageError(f"no images found in {', '.join(paths)}"
                               + ("" if recursive else " (use -r to search sub-folders)"))
    if (not qray.is_uri(output) and Path(output).exists() and not Path(output).is_dir()):
        raise click.BadParameter(f"{output} is a file; --engine ray writes a folder",
                                 param_hint="--output")
    import torch

    from qualiclip.backends import BackendUnavailableError
    from qualiclip.backends.selection import resolve_backend
    from qualiclip.precision import PrecisionEnvError

    try:  # as the actors will resolve them (a GPU actor without --device gets CUDA)
        target = torch.device(device or ("cuda" if num_gpus_per_worker else "cpu"))
        resolved_backend, resolved_precision = resolve_backend(backend, precision, target)
    except BackendUnavailableError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    except PrecisionEnvError as exc:
        raise click.ClickException(str(exc)) from exc
    except (ValueError, RuntimeError) as exc:
        hint = "--backend" if "backend" in str(exc) else "--precision"
        raise click.BadParameter(" ".join(str(exc).split()), param_hint=hint) from exc
    weights = which_weights(weights)
    # Loaded here once (on the CPU) for one-line errors and the SHA-256 and attribute columns
    # the resume check needs, in a thread while Ray starts: both take seconds, mostly in other
    # processes for Ray, so together they end sooner. The actors load their own copy.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:
        loading = thread.submit(load_model_or_fail, weights, "cpu",
                              expected_sha256=expected_sha256, progress=not no_progress)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False,
                     log_to_driver=not no_progress)
        model = loading.result()
    sha = model.weights_info.get("sha256")
    wanted = qray.settings_of({"max_side": max_side, "precision": resolved_precision,
                               "backend": resolved_backend}, model.PAIR_NAMES)
    del model
    done, shas = qray.written(output)
    other = shas - {sha}
    if other:
        raise click.ClickException(
            f"{output} holds scores made with other weights (SHA-256 "
            f"{sorted(other)[0][:12]}...); resume only with the same weights, or write to a "
            "new folder")
    held = qray.folder_settings(output)
    for settings in held:
        # Scores made another way are not comparable: mixing them would make one column of
        # two scales (the importer refuses such a folder too).
        conflict = qray.settings_conflict(settings, wanted)
        if conflict is not None:
            raise click.ClickException(
                f"{output} holds scores made with {conflict}; resume with the same settings, "
                "or write to a new folder")
    click.echo(f"weights {weights} (SHA-256 {str(sha)[:12]}...), "
               f"{len(inputs.files)} files and {len(inputs.shards)} WebDataset shards, "
               f"{len(done)} already in {output}", err=True)
    scored = failed = 0
    total = 0.0
    parts = qray.score_to_parquet(
        inputs, output, weights=weights, device=device, precision=precision, backend=backend,
        max_side=max_side, batch_size=batch_size, rows_per_block=rows_per_block, actors=pool,
        num_gpus_per_worker=num_gpus_per_worker, num_cpus_per_worker=cpus_per_worker,
        progress=not no_progress, skip=frozenset(done), settings=held[0] if held else None)
    try:
        for part in parts:
            scored += part.rows - part.failed
            failed += part.failed
            total += part.score_sum
    except qray.SettingsMismatch as exc:  # an actor resolved 'auto' otherwise than the driver
        raise click.ClickException(str(exc)) from exc
    mean = f"{total / scored:.4f}" if scored else "n/a"
    click.echo(f"scored {scored}, failed {failed}, mean {mean}, {len(done)} already written "
               f"-> {output}", err=True)


@main.command()
@click.option("--weights", default=None, metavar="NAME|URL",
              help="Registered name or URL to fetch into the cache. [default: "
                   "$QUALICLIP_WEIGHTS if set, else qualiclip (the official weights)]")
@click.option("--sha256", "expected_sha256", default=None, help="Expected SHA-256 to verify.")
def download(weights, expected_sha256) -> None:
    """Fetch weights into the cache for offline use; print their path and SHA-256."""
    from qualiclip.weights import (
        REGISTRY,
        WeightsDownloadError,
        resolve_weights,
        sha256_file,
        which_weights,
    )

    weights = which_weights(weights)
    try:
        path, _ = resolve_weights(weights, expected_sha256=expected_sha256)
    except (WeightsDownloadError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if weights in REGISTRY:
        spec = REGISTRY[weights]
        click.echo(f"licence: {spec.license} ({spec.license_url})")
    click.echo(f"path:    {path}")
    click.echo(f"sha256:  {sha256_file(path)}")


@main.command()
def info() -> None:
    """Version, known weights and their cache state, device, torch / CUDA, the backend."""
    import torch

    from qualiclip.backends.selection import resolve_backend
    from qualiclip.precision import (
        CPU_BF16_ENV,
        PrecisionEnvError,
        cpu_bf16_override,
        cpu_has_fast_bf16,
    )
    from qualiclip.weights import REGISTRY, WEIGHTS_ENV, cache_dir, which_weights

    click.echo(f"qualiclip {__version__}")
    click.echo(f"cache:     {cache_dir()}  (override with $QUALICLIP_CACHE)")
    for spec in REGISTRY.values():
        cached = (cache_dir() / spec.filename).is_file()
        click.echo(f"weights:   {spec.name} [{spec.license}] "
                   f"{'cached' if cached else 'not downloaded'}: {spec.url}")
    chosen = f"set by ${WEIGHTS_ENV}" if os.environ.get(WEIGHTS_ENV, "").strip() else (
        f"official; ${WEIGHTS_ENV} or --weights to change")
    click.echo(f"default:   {which_weights()} ({chosen})")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    click.echo(f"device:    {device} (default {'cuda' if cuda else 'cpu'})")
    click.echo(f"torch:     {torch.__version__}, CUDA {torch.version.cuda or 'n/a'}, "
               f"available: {cuda}")
    try:
        bf16 = "native" if cpu_has_fast_bf16() else "no"
    except PrecisionEnvError as exc:
        raise click.ClickException(str(exc)) from exc
    if cpu_bf16_override() is not None:
        bf16 += f" (set by ${CPU_BF16_ENV})"
    click.echo(f"cpu bf16:  {bf16}; cores: {os.cpu_count()}")
    backend, precision = resolve_backend("auto", "auto", torch.device("cuda" if cuda else "cpu"))
    click.echo(f"backend:   {backend} at {precision} by default (--backend / --precision)")


@main.command()
@click.argument("ratings", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--weights", default=None, metavar="NAME|PATH|URL",
              help="Base weights to calibrate (they need the text tower). [default: "
                   "$QUALICLIP_WEIGHTS if set, else qualiclip (the official weights)]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the calibrated checkpoint (only when cross-validation "
                   "shows a gain, or with --force). Without it: report only.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 20),
              help="Cross-validation folds over the rated images.")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Optimisation steps per fit.")
@click.option("--n-ctx", default=4, show_default=True, type=click.IntRange(1, 32),
              help="Learned context words in front of every prompt.")
@click.option("--min-gain", default=0.02, show_default=True, type=float,
              help="Mean held-out SRCC gain that counts as better.")
@click.option("--force", is_flag=True, help="Write the checkpoint even without a gain.")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File keeping the image embeddings between runs (same weights and files).")
@click.option("--device", default=None, help="Device embedding the images (cuda, cpu). "
              "[default: cuda if available]")
def calibrate(ratings, weights, output, folds, steps, n_ctx, min_gain, force, cache,
              device) -> None:
    """Learn prompt context from RATINGS.csv (columns path,rating; numbers, higher is better,
    or good/bad) on the frozen image tower, and print the cross-validated before/after table.
    See docs/calibration.md."""
    from qualiclip.calibrate import CalibrationError
    from qualiclip.calibrate import calibrate as run_calibration
    from qualiclip.weights import WeightsDownloadError

    try:
        report = run_calibration(ratings, weights, output, folds=folds, steps=steps,
                                 n_ctx=n_ctx, min_gain=min_gain, force=force, cache=cache,
                                 device=device)
    except CalibrationError as exc:
        raise click.ClickException(str(exc)) from exc
    except (WeightsDownloadError, OSError, ValueError) as exc:  # CheckpointError: a ValueError
        raise click.ClickException(" ".join(f"cannot load weights: {exc}".split())) from exc
    except RuntimeError as exc:  # e.g. an unavailable CUDA device
        raise click.ClickException(
            " ".join(f"cannot use device {str(device)!r}: {exc}".split())) from exc
    click.echo(f"{report.n_ratings} ratings of {report.n_images} images, {folds}-fold "
               "cross-validation (held-out images only):")
    click.echo(report.table())
    click.echo(report.verdict() if output is not None or not report.improved
               else report.verdict().split(";")[0] + "; give -o to write the checkpoint")


@main.command("convert-pyiqa")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--weights", default=None, metavar="NAME|PATH|URL",
              help="The base QualiCLIP weights the prompts were learned on (with the text "
                   "tower). [default: $QUALICLIP_WEIGHTS if set, else qualiclip (the official "
                   "weights, which pyiqa's files were learned on)]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the converted checkpoint.")
def convert_pyiqa(source, weights, output) -> None:
    """Convert pyiqa's QualiCLIP+ prompt weights (SOURCE: QualiCLIP+_koniq.pth, _clive, _flive
    or _spaq) and the base weights into one checkpoint every entry point scores with, exactly
    as pyiqa does. See docs/calibration.md, "QualiCLIP+ variants"."""
    from qualiclip.checkpoint import CheckpointError
    from qualiclip.pyiqa_plus import convert_pyiqa_plus
    from qualiclip.weights import WeightsDownloadError

    try:
        result = convert_pyiqa_plus(source, weights, output)
    except CheckpointError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from exc
    except (WeightsDownloadError, OSError, ValueError) as exc:
        raise click.ClickException(" ".join(f"cannot convert: {exc}".split())) from exc
    click.echo(f"{result.variant} (prompts learned on {result.dataset}) written to "
               f"{result.output}")
    click.echo(f"source sha256: {result.source_sha256}")
    click.echo(f"base sha256:   {result.base_sha256}")
    for line in result.license_lines():
        click.echo(f"licence: {line}")
    if result.prefix_difference > 1e-3:
        click.echo(f"warning: the file's start-token embedding differs from the base's by "
                   f"{result.prefix_difference:.3g}: were these prompts learned on other base "
                   "weights?", err=True)


if __name__ == "__main__":
    main()
