"""Scoring on Ray Data: the same scores as :func:`qualiclip.score_images`, on one machine or a
cluster (docs/scale.md).

Two layers:

* :class:`QualiCLIPScorer`, a callable class for ``Dataset.map_batches``: each actor loads the
  model once and scores its batches through the library's inference core
  (:func:`qualiclip.scoring.score_decoded`: native resolution, same-size batches, precision and
  backend rules, the out-of-memory split, the non-finite rule). Rows in, one result row per
  input row out; a bad image is an error row, never a failed batch. ::

      ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
      scores = ds.map_batches(QualiCLIPScorer, compute=ray.data.ActorPoolStrategy(size=4),
                              num_gpus=1, batch_size=256,
                              fn_constructor_kwargs={"weights": "/models/qualiclip.pth"})

* :func:`score_to_parquet`, what ``qualiclip score --engine ray`` runs: lists the sources
  (folders, globs, ``s3://`` / ``gs://`` / ``file://`` URIs, WebDataset ``.tar`` shards),
  leaves out what an earlier run into the same output folder already wrote (resume), scores the
  rest with :class:`QualiCLIPScorer` actors and writes one Parquet part per finished block,
  atomically, so a killed job loses only the blocks in flight.

``ray`` and ``pyarrow`` (the ``ray`` extra) are imported inside the functions that need them:
``import qualiclip`` and the local ``qualiclip score`` never load them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualiclip.constants import IMAGE_EXTENSIONS
from qualiclip.prompts import PAIR_NAMES

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

#: Columns of every result row, in order: the input's path or key, the overall score in [0, 1]
#: (null on error), the 7 attribute scores, the image's own size, the error text (else null).
#: A checkpoint with its own prompt pairs has its own attribute columns instead of the 7.
RESULT_COLUMNS = ("path", "score", *PAIR_NAMES, "width", "height", "error")
#: The columns of a result row that are not attribute scores.
FIXED_COLUMNS = ("path", "score", "width", "height", "error")
#: Added by ``provenance=True`` (the CLI): the weights' SHA-256 and the preprocessing record
#: (JSON of :meth:`qualiclip.inference.Preprocessing.describe`), the same in every row of a run.
PROVENANCE_COLUMNS = ("weights_sha256", "preprocessing")
#: Columns :class:`QualiCLIPScorer` takes a row's key from, first present wins.
KEY_COLUMNS = ("path", "__key__", "key")
#: Columns holding encoded bytes or a decoded array; WebDataset samples
#: (``read_webdataset(decoder=None)``) hold theirs under the member's extension.
IMAGE_COLUMNS = ("bytes", "image", *sorted({ext.lstrip(".") for ext in IMAGE_EXTENSIONS}))
#: Column a read stage puts a per-file read failure in (the scorer turns it into the error row).
READ_ERROR = "read_error"
#: Separates a WebDataset shard from a member's name in a result's ``path``.
SHARD_SEP = "::"
#: CPU reserved by a read task (listing a shard, fetching an object): reads wait on I/O, and an
#: actor given every core (``--cpus-per-worker`` = the machine's count) must not starve them.
READ_CPUS = 0
#: What a score depends on besides the weights and the pixels, as keys of the preprocessing
#: record, with the ``qualiclip score`` option that sets each: a resume must match them all
#: (and the attribute columns, which come with the weights' prompt pairs).
SETTING_OPTIONS = {"max_side": "--max-side", "precision": "--precision",
                   "backend": "--backend", "attributes": "--weights"}


class SettingsMismatch(ValueError):
    """Scores about to be written into a folder that holds scores made with other settings
    (the message is one line, naming the option)."""


def result_schema(provenance: bool = False,
                  pair_names: Sequence[str] = PAIR_NAMES) -> pa.Schema:
    """The Arrow schema of result rows (:data:`RESULT_COLUMNS`, with ``pair_names`` as the
    attribute columns, plus :data:`PROVENANCE_COLUMNS` with ``provenance``)."""
    import pyarrow as pa

    fields = [pa.field("path", pa.string()), pa.field("score", pa.float64())]
    fields += [pa.field(name, pa.float64()) for name in pair_names]
    fields += [pa.field("width", pa.int64()), pa.field("height", pa.int64()),
               pa.field("error", pa.string())]
    if provenance:
        fields += [pa.field(name, pa.string()) for name in PROVENANCE_COLUMNS]
    return pa.schema(fields)


def is_uri(path: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: read through pyarrow's file systems."""
    return "://" in path


class QualiCLIPScorer:
    """Ray Data callable class: a batch of images -> one result row per image.

    Constructed once per actor (the model loads once); called with a batch in ``"numpy"``
    format (a dict of arrays; Ray's default) and returns a ``pyarrow.Table`` with
    :data:`RESULT_COLUMNS`, row ``i`` for input row ``i``.

    An input row is found by column:

    * key: ``key_column``, else the first of :data:`KEY_COLUMNS` present (``path`` from
      ``read_binary_files(include_paths=True)``, ``__key__`` from ``read_webdataset``);
      without one, rows are named ``<row #i>``.
    * image: ``image_column``, else the first non-null of :data:`IMAGE_COLUMNS` present:
      encoded file bytes (decoded as :func:`qualiclip.load_image` decodes the file), or a
      decoded ``(H, W, 3)`` array (``read_images``; uint8 in [0, 255] or float in [0, 1]). A
      row with no image but a ``path`` is read from that path (local, or a URI through
      pyarrow's file systems).

    Args:
        weights: name, checkpoint path or URL, as :func:`qualiclip.load_model` (``None``:
            ``$QUALICLIP_WEIGHTS`` as the actor sees it, else the official weights). On a
            cluster a path must exist on every worker.
        device: default CUDA when the actor has a GPU (``num_gpus`` in ``map_batches``).
        precision, backend: as :func:`qualiclip.score_images` (resolved for the actor's
            device: ``auto`` is fp16 on CUDA).
        max_side: cap on the longer side, ``None`` = native resolution (official).
        batch_size: most images per model batch (default 32); ``max_batch_pixels`` also
            bounds it. Independent of the Ray batch size, which only sets how many rows one
            call gets.
        provenance: add :data:`PROVENANCE_COLUMNS` to every row.
        threads: torch's intra-op threads in this actor (default: the CPUs Ray reserved for
            it, at least 1, whatever ``$OMP_NUM_THREADS`` the worker inherited; outside a Ray
            worker, torch's own default). In fp32 the thread count, like the batch
            composition, moves scores by float rounding (docs/scale.md, "Exactness").
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None,
                 precision: str = "auto", backend: str = "auto", max_side: int | None = None,
                 batch_size: int | None = None, max_batch_pixels: int | None = None,
                 key_column: str | None = None, image_column: str | None = None,
                 provenance: bool = False, threads: int | None = None) -> None:
        import torch

        from qualiclip.inference import make_scorer
        from qualiclip.loading import load_model

        threads = threads or _reserved_cpus()
        if threads:
            torch.set_num_threads(threads)
        model = load_model(weights, device=device, progress=False)
        model.eval()
        self.scorer = make_scorer(model, precision=precision, backend=backend, progress=False)
        self.pair_names = tuple(self.scorer.pair_names)
        self.max_side = max_side
        self.batch_size = batch_size
        self.max_batch_pixels = max_batch_pixels
        self.key_column = key_column
        self.image_column = image_column
        self.provenance = provenance
        record = self.scorer.preprocessing(max_side).describe(model.weights_info)
        self.weights_sha256 = model.weights_info.get("sha256")
        self.preprocessing = json.dumps(record, sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from qualiclip.scoring import score_decoded

        n = len(next(iter(batch.values()))) if batch else 0
        keys = self._keys(batch, n)
        decoded = [self._decode(i, keys[i], batch) for i in range(n)]
        results = list(score_decoded(decoded, self.scorer, self.batch_size,
                                     self.max_batch_pixels))
        return results_table([r.to_row(self.pair_names) for r in results],
                             (self.weights_sha256, self.preprocessing) if self.provenance
                             else None, self.pair_names)

    def _keys(self, batch: dict[str, np.ndarray], n: int) -> list[str]:
        column = self.key_column or next((c for c in KEY_COLUMNS if c in batch), None)
        if column is None:
            return [f"<row #{i}>" for i in range(n)]
        return [str(value) for value in batch[column]]

    def _image(self, i: int, batch: dict[str, np.ndarray]) -> Any:
        columns = [self.image_column] if self.image_column else [c for c in IMAGE_COLUMNS
                                                                 if c in batch]
        for column in columns:
            value = batch[column][i]
            # A missing cell is None, or NaN where Ray filled a column some rows lack (a
            # WebDataset shard mixing .jpg and .png members).
            if value is not None and not isinstance(value, float):
                return value
        return None

    def _decode(self, index: int, key: str, batch: dict[str, np.ndarray]):
        """Row ``index`` -> a :class:`~qualiclip.inference.DecodedImage` (never raises)."""
        from qualiclip.images import (
            ImageReadError,
            load_image,
            load_image_bytes,
            read_error_text,
            short_name,
        )
        from qualiclip.inference import DecodedImage

        read_error = batch.get(READ_ERROR)
        if read_error is not None and read_error[index] is not None:
            return DecodedImage(index, key, None, error=str(read_error[index]))
        value = self._image(index, batch)
        try:
            if value is None:
                path = batch["path"][index] if "path" in batch else None
                if path is None:
                    raise ValueError("the row holds no image (no bytes, array or path)")
                if is_uri(str(path)):
                    image = load_image_bytes(read_uri(str(path)), key, self.max_side,
                                             as_uint8=True)
                else:
                    image = load_image(str(path), self.max_side, as_uint8=True)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                image = load_image_bytes(bytes(value), key, self.max_side, as_uint8=True)
            else:
                image = load_image(_as_array(value), self.max_side, as_uint8=True)
        except ImageReadError as exc:  # named by the row's key, not "<ndarray>"
            return DecodedImage(index, key, None, error=f"{short_name(key)}: {exc.reason}")
        except Exception as exc:  # noqa: BLE001 - one bad image never fails its batch
            return DecodedImage(index, key, None, error=read_error_text(key, exc))
        return DecodedImage(index, key, image.tensor, image.width, image.height)


def _reserved_cpus() -> int | None:
    """The CPUs Ray reserved for the calling actor or task (at least 1), ``None`` outside a Ray
    worker. Ray sets ``$OMP_NUM_THREADS`` to this only when the driver had not set it, so an
    actor would otherwise inherit any thread count."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    cpus = context.get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus is not None else None


def _as_array(value: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(value)


def results_table(rows: Sequence[dict[str, Any]],
                  provenance: tuple[str | None, str] | None = None,
                  pair_names: Sequence[str] = PAIR_NAMES) -> pa.Table:
    """Result rows (``ScoreResult.to_row``) -> a table of :func:`result_schema`; non-finite
    numbers become nulls (none is a score)."""
    import math

    import pyarrow as pa

    schema = result_schema(provenance is not None, pair_names)
    columns: dict[str, list] = {name: [] for name in schema.names}
    for row in rows:
        for name in ("path", "score", *pair_names, "width", "height", "error"):
            value = row.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            columns[name].append(value)
        if provenance is not None:
            columns["weights_sha256"].append(provenance[0])
            columns["preprocessing"].append(provenance[1])
    return pa.table(columns, schema=schema)


def read_uri(uri: str) -> bytes:
    """A whole object (``s3://``, ``gs://``, ``file://``) through pyarrow's file systems."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_file(path) as handle:
        return handle.read()


# --- the CLI's engine ----------------------------------------------------------------------------
@dataclass
class Inputs:
    """What a run scores: image files (local paths or URIs) and WebDataset shards."""

    files: list[str]
    shards: list[str]


def _is_shard(name: str) -> bool:
    return name.lower().endswith(".tar")


def list_inputs(sources: Sequence[str], recursive: bool) -> Inputs:
    """Expand ``sources``: local folders (image-named entries, sub-folders with ``recursive``),
    globs, files, URIs of objects or prefixes (listed through pyarrow's file systems), and
    ``.tar`` shards (WebDataset: every image member is one input). Sorted per source, without
    duplicates. A missing local file is kept (it becomes an error row)."""
    import glob

    from qualiclip.files import image_entries

    files: list[str] = []
    shards: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name not in seen:
            seen.add(name)
            (shards if _is_shard(name) else files).append(name)

    for source in sources:
        if is_uri(source):
            for name in _list_uri(source, recursive):
                add(name)
        elif any(ch in source for ch in "*?["):
            for name in sorted(glob.glob(source, recursive=recursive)):
                add(os.path.abspath(name))
        elif Path(source).is_dir():
            for entry in image_entries(source, recursive):
                add(os.path.abspath(entry))
            for tar in sorted(Path(source).glob("**/*.tar" if recursive else "*.tar")):
                add(os.path.abspath(tar))
        else:
            add(os.path.abspath(source))
    return Inputs(files, shards)


def _list_uri(uri: str, recursive: bool) -> list[str]:
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such object or prefix")
    entries = filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive))
    names = sorted(e.path for e in entries if e.type == pafs.FileType.File
                   and (Path(e.path).suffix.lower() in IMAGE_EXTENSIONS or _is_shard(e.path)))
    return [f"{scheme}://{name}" if scheme != "file" else f"file://{name}" for name in names]


def _read_table(out: dict[str, list]) -> pa.Table:
    """A read stage's rows with explicit types (all-null columns would otherwise be typeless)."""
    import pyarrow as pa

    return pa.table(out, schema=pa.schema([("path", pa.string()), ("bytes", pa.binary()),
                                           (READ_ERROR, pa.string())]))


def _fetch(batch: dict[str, np.ndarray]) -> pa.Table:
    """Read stage for files: URIs are fetched here (I/O beside the scoring actors); local files
    are left to the scorer, which reads them as ``qualiclip score`` does (same error texts)."""
    from qualiclip.images import short_name

    out: dict[str, list] = {"path": [], "bytes": [], READ_ERROR: []}
    for path in batch["path"]:
        path = str(path)
        data, error = None, None
        if is_uri(path):
            try:
                data = read_uri(path)
            except Exception as exc:  # noqa: BLE001 - a missing object is one error row
                error = f"{short_name(path)}: cannot read object ({exc})"
        out["path"].append(path)
        out["bytes"].append(data)
        out[READ_ERROR].append(error)
    return _read_table(out)


def _expand_shards(batch: dict[str, np.ndarray], done: frozenset[str] = frozenset()
                   ) -> pa.Table:
    """WebDataset shards -> one row per image member (``<shard>::<member>``), members already
    written (``done``) left out; an unreadable shard is one error row."""
    import tarfile

    from qualiclip.images import short_name

    out: dict[str, list] = {"path": [], "bytes": [], READ_ERROR: []}

    def row(path: str, data: bytes | None, error: str | None) -> None:
        out["path"].append(path)
        out["bytes"].append(data)
        out[READ_ERROR].append(error)

    for shard in batch["shard"]:
        shard = str(shard)
        try:
            handle = _open_stream(shard)
            with handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile() or (Path(member.name).suffix.lower()
                                               not in IMAGE_EXTENSIONS):
                        continue
                    key = f"{shard}{SHARD_SEP}{member.name}"
                    if key in done:
                        continue
                    extracted = tar.extractfile(member)
                    row(key, extracted.read() if extracted else b"", None)
        except (OSError, tarfile.TarError) as exc:
            row(f"{shard}{SHARD_SEP}", None,
                f"{short_name(shard)}: cannot read WebDataset shard ({exc})")
    return _read_table(out)


def _open_stream(path: str):
    if is_uri(path):
        from pyarrow import fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(path)
        return filesystem.open_input_stream(inner)
    return open(path, "rb")


# --- output folder: parts, resume ----------------------------------------------------------------
def _output_fs(out_dir: str):
    """``(filesystem, path)`` of the output folder (a local path or a URI)."""
    from pyarrow import fs as pafs

    if is_uri(out_dir):
        return pafs.FileSystem.from_uri(out_dir)
    return pafs.LocalFileSystem(), os.path.abspath(out_dir)


def part_files(out_dir: str) -> list[str]:
    """The finished Parquet parts in ``out_dir`` (paths on its file system), sorted; temporary
    files of a write cut off by a kill (``.part-*.tmp``) are not parts."""
    from pyarrow import fs as pafs

    filesystem, root = _output_fs(out_dir)
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File
                  and e.base_name.startswith("part-") and e.base_name.endswith(".parquet"))


def read_results(out_dir: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Every finished part of ``out_dir`` as one table (:func:`result_schema` columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, _ = _output_fs(out_dir)
    tables = [pq.read_table(path, columns=list(columns) if columns else None,
                            filesystem=filesystem) for path in part_files(out_dir)]
    if not tables:
        schema = result_schema(provenance=True)
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def written(out_dir: str) -> tuple[set[str], set[str]]:
    """``(paths, weights SHA-256s)`` already in ``out_dir``'s parts."""
    table = read_results(out_dir, ["path", "weights_sha256"])
    return (set(table.column("path").to_pylist()),
            {s for s in table.column("weights_sha256").to_pylist() if s})


def settings_of(preprocessing: dict[str, Any], pair_names: Sequence[str]) -> dict[str, Any]:
    """The :data:`SETTING_OPTIONS` of a run: from its preprocessing record (resolved
    precision and backend, ``max_side``) and its attribute columns."""
    settings = {key: preprocessing.get(key) for key in SETTING_OPTIONS if key != "attributes"}
    return settings | {"attributes": list(pair_names)}


def _table_settings(table: pa.Table, names: Sequence[str] | None = None
                    ) -> list[dict[str, Any]]:
    """The distinct settings in ``table`` (result rows with provenance; ``names``: the
    columns of the file it was read from, default its own)."""
    names = table.schema.names if names is None else names
    pairs = [n for n in names if n not in FIXED_COLUMNS + PROVENANCE_COLUMNS]
    records = sorted(r for r in table.column("preprocessing").unique().to_pylist() if r)
    return [settings_of(json.loads(r), pairs) for r in records]


def folder_settings(out_dir: str) -> list[dict[str, Any]]:
    """The distinct settings (:func:`settings_of`) of the scores already in ``out_dir``."""
    import pyarrow.parquet as pq

    filesystem, _ = _output_fs(out_dir)
    found: list[dict[str, Any]] = []
    for path in part_files(out_dir):
        names = pq.read_schema(path, filesystem=filesystem).names
        table = pq.read_table(path, columns=["preprocessing"], filesystem=filesystem)
        found += [s for s in _table_settings(table, names) if s not in found]
    return found


def _shown(key: str, value: Any) -> str:
    if key == "max_side":
        return "native resolution" if value is None else f"--max-side {value}"
    if key == "attributes":
        return f"attribute columns {', '.join(value)}"
    return f"{SETTING_OPTIONS[key]} {value}"


def settings_conflict(held: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """``None`` when scores made with ``wanted`` settings may join ``held`` ones, else a
    phrase naming the first difference: ``"--max-side 512 (this run: native resolution)"``."""
    for key in SETTING_OPTIONS:
        if held.get(key) != wanted.get(key):
            return f"{_shown(key, held.get(key))} (this run: {_shown(key, wanted.get(key))})"
    return None


@dataclass
class PartWritten:
    """One Parquet part written by :func:`score_to_parquet`: its path, rows and failures."""

    path: str
    rows: int
    failed: int
    score_sum: float


def _write_part(table: pa.Table, out_dir: str, name: str) -> str:
    """Write ``table`` as ``out_dir/name``: to a temporary name, then renamed, so a part is
    either whole or absent (a killed job leaves at most a ``.tmp`` file, never a part)."""
    import pyarrow.parquet as pq

    filesystem, root = _output_fs(out_dir)
    final = f"{root}/{name}"
    temporary = f"{root}/.{name}.tmp"
    pq.write_table(table, temporary, filesystem=filesystem)
    filesystem.move(temporary, final)
    return final


def score_to_parquet(inputs: Inputs, out_dir: str, weights: str | None = None,
                     device: str | None = None, precision: str = "auto",
                     backend: str = "auto", max_side: int | None = None,
                     batch_size: int | None = None, rows_per_block: int = 256,
                     actors: int | tuple[int, int] = 1, num_gpus_per_worker: float = 0,
                     num_cpus_per_worker: float = 1, progress: bool = True,
                     skip: frozenset[str] = frozenset(),
                     settings: dict[str, Any] | None = None) -> Iterator[PartWritten]:
    """Score ``inputs`` on the current Ray cluster (``ray.init`` first) into ``out_dir``, one
    Parquet part per finished block, yielding each part as it is written.

    Args:
        skip: paths / keys already written (a resume): left out before anything is read.
        rows_per_block: inputs per Ray batch, hence per part (and lost at most per actor by a
            kill).
        actors: scoring actors, a fixed count or ``(min, max)`` for an autoscaling pool.
        num_gpus_per_worker: GPUs per actor (0: CPU; fractions share a GPU).
        num_cpus_per_worker: CPU cores reserved per actor (torch's threads follow it).
        settings: the :func:`settings_of` every part must have (those already in
            ``out_dir`` on a resume; default: those of this run's first part), so that actors
            resolving ``auto`` differently (nodes with and without native bf16) never mix
            scores in one folder.
    The other arguments are :class:`QualiCLIPScorer`'s.

    Raises:
        SettingsMismatch: a block's scores were made with other settings; it is not written.
    """
    import pyarrow as pa
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    filesystem, root = _output_fs(out_dir)
    filesystem.create_dir(root, recursive=True)
    files = [p for p in inputs.files if p not in skip]
    datasets = []
    if files:
        blocks = [pa.table({"path": files[i:i + rows_per_block]})
                  for i in range(0, len(files), rows_per_block)]
        paths = ray.data.from_arrow(blocks)
        if inputs.shards or any(is_uri(p) for p in files):
            paths = paths.map_batches(_fetch, batch_size=None, num_cpus=READ_CPUS)
        # else local files only: the actors read them themselves (as the local engine does),
        # so no read stage, whose tasks would only start one more worker process and pass
        # each block through the object store once more.
        datasets.append(paths)
    if inputs.shards:
        datasets.append(ray.data.from_arrow([pa.table({"shard": [s]}) for s in inputs.shards])
                        .map_batches(_expand_shards, batch_size=None, num_cpus=READ_CPUS,
                                     fn_kwargs={"done": frozenset(skip)}))
    if not datasets:
        return
    ds = datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
    pool = (ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
            if isinstance(actors, tuple) else ray.data.ActorPoolStrategy(size=actors))
    scored = ds.map_batches(
        QualiCLIPScorer, compute=pool, batch_size=rows_per_block, batch_format="numpy",
        num_gpus=num_gpus_per_worker, num_cpus=num_cpus_per_worker,
        fn_constructor_kwargs=dict(weights=weights, device=device, precision=precision,
                                   backend=backend, max_side=max_side,
                                   batch_size=batch_size, provenance=True))
    run = uuid.uuid4().hex[:12]
    for number, table in enumerate(scored.iter_batches(batch_size=None,
                                                       batch_format="pyarrow")):
        if table.num_rows == 0:
            continue
        for made in _table_settings(table):
            settings = settings or made
            conflict = settings_conflict(settings, made)
            if conflict is not None:
                raise SettingsMismatch(f"{out_dir} holds scores made with {conflict}; "
                                       "resume with the same settings, or write to a new "
                                       "folder")
        path = _write_part(table, out_dir, f"part-{run}-{number:06d}.parquet")
        errors = table.column("error").to_pylist()
        scores = [s for s in table.column("score").to_pylist() if s is not None]
        yield PartWritten(path, table.num_rows, sum(e is not None for e in errors),
                          float(sum(scores)))
