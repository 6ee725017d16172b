"""The one ownership rule: the plugin writes only what it made, and never takes back from a user.

Every writer asks this module before its first write: scores, attribute scores, error fields,
flag fields, flag tags (scoring runs and the "Image quality" panel), saved flag views, quality
maps and their error fields, ratings (the panel), report files and calibrated checkpoint files.

What the plugin made is read from its run records (:mod:`qualiclip_plugin.trust.provenance`):
a scoring run records its score field, attribute fields, flag field and flag tag; a maps run its
heatmap field and error field; the panel records its ratings field (a run record too) and the
tags it writes in its own store; files the plugin writes outside reports (calibrated
checkpoints) are recorded in :data:`WRITTEN_FILES_COLLECTION`. Each field
belongs to one run: another run (of either kind) may not write it, whatever ``overwrite`` says.
Anything else that already holds values belongs to the user, and a run that would write it is
refused before its first write.

Tags are shared by samples, so ownership is kept per sample: the samples the plugin put a tag
on are recorded (collection :data:`TAGGED_COLLECTION`), and only those lose the tag when the
plugin moves or removes it. A colleague who tags a sample by hand keeps that tag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qualiclip_plugin.scoring.writing import (
    FLAG_VIEW_MARK,
    FRAMES,
    FieldLayout,
    count_values,
    flat_schema,
    schema_conflicts,
)
from qualiclip_plugin.trust import provenance
from qualiclip_plugin.trust.policy import AppPolicy, calibrated_checkpoint_file, output_file
from qualiclip_plugin.trust.request import RequestError, ScoreRequest

#: The "Image quality" panel's execution store (one per dataset): its saved thresholds, and the
#: tags it has written, which count as the plugin's here.
STORE_NAME = "qualiclip_panel"
#: One document per sample the plugin tagged: ``{dataset, tag, sample}``.
TAGGED_COLLECTION = "qualiclip_tagged_samples"


@dataclass(frozen=True)
class Owner:
    """The plugin run a field belongs to.

    Attributes:
        run: ``"score:<field>"`` (a scoring run) or ``"maps:<field>"`` (a quality-maps run).
        what: what the field holds, for messages (``"the 'sharp image' attribute scores of
            the scoring run into 'quality'"``).
    """

    run: str
    what: str


def scoring_run(field: str) -> str:
    """The :attr:`Owner.run` of the scoring run into ``field``."""
    return f"score:{field}"


def maps_run(field: str) -> str:
    """The :attr:`Owner.run` of the quality-maps run into ``field``."""
    return f"maps:{field}"


def ratings_run(field: str) -> str:
    """The :attr:`Owner.run` of the ratings the panel writes into ``field``."""
    return f"ratings:{field}"


# --- who made what ------------------------------------------------------------------------------
def panel_store(dataset):
    """The panel's execution store for ``dataset`` (FiftyOne's ``ExecutionStore``)."""
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE_NAME, dataset._doc.id)


def written_tags(dataset) -> list[str]:
    """The tags the panel has written on ``dataset`` (they count as the plugin's)."""
    return list(panel_store(dataset).get("tags") or [])


def field_owners(dataset) -> dict[str, Owner]:
    """Every field the plugin's recorded runs on ``dataset`` own, with its run."""
    owners: dict[str, Owner] = {}
    for record in provenance.all_recorded(dataset):
        field = record.get("field")
        if not field:
            continue
        run, of = scoring_run(field), f"of the scoring run into '{field}'"
        options: dict[str, Any] = record.get("options") or {}
        owners[field] = Owner(run, f"the scores {of}")
        owners[f"{field}_error"] = Owner(run, f"the error messages {of}")
        # A video run's attribute scores are frame fields; its frames and summaries are its own.
        frames = FRAMES if options.get("video") else ""
        if options.get("pair_scores", True):
            for name in record.get("pair_names") or ():
                owners[f"{frames}{field}_{name}"] = Owner(
                    run, f"the '{name.replace('_', ' ')}' attribute scores {of}")
        if frames:
            layout = FieldLayout.for_field(field, video=True)
            owners[layout.frame_score] = Owner(run, f"the frame scores {of}")
            owners[layout.frame_error] = Owner(run, f"the frame error messages {of}")
            for name, what in ((layout.min, "lowest frame scores"),
                               (layout.p10, "10th-percentile frame scores"),
                               (layout.segments, "worst segments")):
                owners[name] = Owner(run, f"the {what} {of}")
        if options.get("flag_field"):
            owners[options["flag_field"]] = Owner(run, f"the low-quality flags {of}")
    for record in provenance.all_maps_recorded(dataset):
        field = record.get("field")
        if not field:
            continue
        run, of = maps_run(field), f"of the quality-maps run into '{field}'"
        owners[field] = Owner(run, f"the quality maps {of}")
        owners[record.get("error_field") or f"{field}_error"] = Owner(
            run, f"the error messages {of}")
    for record in provenance.all_ratings_recorded(dataset):
        field = record.get("field")
        if field:
            owners[field] = Owner(ratings_run(field),
                                  "the ratings given in the Image quality panel")
    return owners


def plugin_made(dataset) -> tuple[set[str], set[str]]:
    """``(fields, tags)`` the plugin's recorded runs (and the panel) on ``dataset`` wrote."""
    tags: set[str] = set()
    for record in provenance.all_recorded(dataset):
        options: dict[str, Any] = record.get("options") or {}
        if options.get("flag_tag"):
            tags.add(options["flag_tag"])
    tags.update(written_tags(dataset))  # the panel tags with them too
    return set(field_owners(dataset)), tags


# --- fields -------------------------------------------------------------------------------------
def check_fields(dataset, fields: dict[str, str], run: str) -> None:
    """Refuse writing ``fields`` (name -> what the run puts there, e.g. ``"score field"``) for
    ``run`` (:func:`scoring_run` / :func:`maps_run`) when one belongs to another plugin run, or
    holds values no plugin run recorded (the user's).

    Raises:
        RequestError: names the field, whose it is and what to do.
    """
    owners = field_owners(dataset)
    schema = flat_schema(dataset)  # frame fields of a video dataset as frames.<name>
    for name, role in fields.items():
        owner = owners.get(name)
        if owner is not None:
            if owner.run != run:
                raise RequestError(
                    f"{role} '{name}' holds {owner.what}; one run never writes another's "
                    f"fields, with or without overwrite: choose another {_noun(role)}")
            continue
        if name not in schema:
            continue
        count = count_values(dataset, name)
        if count == 0:
            continue  # declared but empty: nothing to lose
        if role == "score field":
            raise RequestError(
                f"field '{name}' holds {count} values with no record of how they were made "
                "(written by apply_model or another tool); this plugin does not replace values "
                "it did not write: write to a new field, or clear that field yourself first")
        raise RequestError(f"{role} '{name}' already exists and was not written by this "
                           f"plugin; it is left untouched: choose another {_noun(role)}")


def _noun(role: str) -> str:
    """The form field that chooses a ``role`` field (what the user changes)."""
    return {"flag field": "flag field", "heatmap field": "heatmap field name",
            "heatmap error field": "heatmap field name",
            "ratings field": "ratings field name"}.get(role, "score field name")


def score_fields(layout: FieldLayout) -> dict[str, str]:
    """The fields a scoring run writes, with what it puts there (for :func:`check_fields`)."""
    fields = {layout.score: "score field", layout.error: "error field"}
    fields.update({name: "attribute field" for name in layout.pairs.values()})
    if layout.video:
        fields.update({layout.min: "summary field", layout.p10: "summary field",
                       layout.segments: "segments field", layout.frame_score: "frame score field",
                       layout.frame_error: "frame error field"})
    if layout.flag:
        fields[layout.flag] = "flag field"
    return fields


def check_writable(dataset, layout: FieldLayout, request: ScoreRequest,
                   ownership: bool = True) -> None:
    """Refuse a run whose fields exist with types it cannot write, or (``ownership``) belong
    to another run or the user (:func:`check_not_user_data`; shards skip it: their queuing run
    checked).

    Raises:
        RequestError: says which field and what to do.
    """
    conflicts = schema_conflicts(dataset, layout)
    if conflicts:
        raise RequestError("cannot write the scores: " + "; ".join(conflicts)
                           + ". Choose another field name.")
    if ownership:
        check_not_user_data(dataset, layout, request)


def check_not_user_data(dataset, layout: FieldLayout, request: ScoreRequest) -> None:
    """Refuse a scoring run whose fields belong to another run or hold the user's values, or
    whose flag tag is the user's.

    Raises:
        RequestError: names the field or tag and what to do instead.
    """
    check_fields(dataset, score_fields(layout), scoring_run(layout.score))
    if request.flagging and request.flag_tag:
        check_tag(dataset, request.flag_tag)


def check_map_fields(dataset, field: str) -> None:
    """Refuse a quality-maps run into ``field`` (and ``<field>_error``) when either belongs to
    another run or holds the user's values (their own heatmaps or notes)."""
    check_fields(dataset, {field: "heatmap field", f"{field}_error": "heatmap error field"},
                 maps_run(field))


def check_ratings_field(dataset, field: str) -> None:
    """Refuse rating into ``field`` when it belongs to a plugin run or holds the user's
    values (the panel writes ratings only into a field it recorded, or a new one)."""
    check_fields(dataset, {field: "ratings field"}, ratings_run(field))


# --- tags ---------------------------------------------------------------------------------------
def check_tag(dataset, tag: str) -> None:
    """Refuse writing ``tag`` when samples carry it and neither a run of this plugin nor its
    panel ever set it (it is the user's).

    Raises:
        RequestError: names the tag and what to do.
    """
    if tag in plugin_made(dataset)[1] or tag not in dataset.count_sample_tags():
        return
    raise RequestError(f"tag '{tag}' is already used on this dataset and was not set by this "
                       "plugin; it is left untouched: choose another flag tag")


def _tagged():
    import fiftyone.core.odm as foodm

    collection = foodm.get_db_conn()[TAGGED_COLLECTION]
    collection.create_index([("dataset", 1), ("tag", 1), ("sample", 1)], unique=True)
    return collection


def tagged_by_plugin(dataset, tag: str) -> set[str]:
    """IDs of the samples of ``dataset`` the plugin put ``tag`` on (and has not removed)."""
    docs = _tagged().find({"dataset": str(dataset._doc.id), "tag": tag}, {"sample": 1})
    return {doc["sample"] for doc in docs}


def add_tag(dataset, target, tag: str) -> int:
    """Tag the samples of ``target`` (a view of ``dataset``) with the plugin's ``tag``; only
    those that did not have it yet are recorded as the plugin's (a tag a user put there stays
    the user's). Returns how many samples the plugin tagged now.

    The caller checked :func:`check_tag` before its first write.
    """
    # Remembered before the first write: a run stopped half-way still owns what it tagged.
    _remember_tag(panel_store(dataset), tag)
    new = target.match_tags(tag, bool=False).values("id")
    if new:
        _tagged().insert_many([{"dataset": str(dataset._doc.id), "tag": tag, "sample": sid}
                               for sid in new], ordered=False)
        dataset.select(new).tag_samples(tag)
    return len(new)


def remove_tag(dataset, target, tag: str) -> int:
    """Remove the plugin's ``tag`` from the samples of ``target`` the plugin tagged; samples a
    user tagged by hand keep it. Returns how many lost the tag."""
    ours = tagged_by_plugin(dataset, tag)
    mine = [sid for sid in target.values("id") if sid in ours]
    if not mine:
        return 0
    tagged = dataset.select(mine).match_tags(tag)
    count = tagged.count()
    if count:
        tagged.untag_samples(tag)
    # The records go too: the plugin's tag is off these samples (or a user took it off).
    _tagged().delete_many({"dataset": str(dataset._doc.id), "tag": tag,
                           "sample": {"$in": mine}})
    return count


def move_tag(dataset, target, tag: str, ids: Iterable[str]) -> None:
    """Make the plugin's ``tag`` mark exactly the samples ``ids`` of ``target``: removed where
    the plugin put it before (:func:`remove_tag`), then added to ``ids``. A user's own tags on
    other samples stay."""
    remove_tag(dataset, target, tag)
    ids = list(ids)
    if ids:
        add_tag(dataset, dataset.select(ids), tag)


def _remember_tag(store, tag: str) -> None:
    written = store.get("tags") or []
    if tag not in written:
        store.set("tags", [*written, tag])


# --- saved views --------------------------------------------------------------------------------
def saved_view_conflict(dataset, name: str) -> str | None:
    """The saved view that saving ``name`` would replace although this plugin did not make it
    (FiftyOne replaces views whose names share a slug: "my_worst" replaces "My Worst")."""
    import fiftyone.core.utils as fou

    slug = fou.to_slug(name)
    for info in dataset.list_saved_views(info=True):
        if fou.to_slug(info["name"]) == slug and not str(
                info.get("description") or "").startswith(FLAG_VIEW_MARK):
            return info["name"]
    return None


def check_saved_view(dataset, name: str) -> None:
    """Refuse saving the flag view ``name`` over a saved view the user made.

    Raises:
        RequestError: names the user's view.
    """
    taken = saved_view_conflict(dataset, name)
    if taken is not None:
        raise RequestError(f"flag_view {name!r} would replace your saved view '{taken}'; "
                           "choose another name")


# --- checkpoint files ---------------------------------------------------------------------------
#: One document per checkpoint file the plugin wrote: ``{path, size, mtime_ns, ...}``. A file
#: counts as the plugin's while it is still the file written (same size and time).
WRITTEN_FILES_COLLECTION = "qualiclip_written_files"


def _written_files():
    import fiftyone.core.odm as foodm

    collection = foodm.get_db_conn()[WRITTEN_FILES_COLLECTION]
    collection.create_index("path", unique=True)
    return collection


def remember_written_file(path: Path, **details: Any) -> None:
    """Record ``path`` (just written) as the plugin's, with ``details`` (its provenance)."""
    stat = path.stat()
    _written_files().replace_one(
        {"path": str(path)}, {"path": str(path), "size": stat.st_size,
                              "mtime_ns": stat.st_mtime_ns, **details}, upsert=True)


def plugin_wrote_file(path: Path) -> bool:
    """Whether ``path`` is a file this plugin wrote and nobody has replaced since."""
    doc = _written_files().find_one({"path": str(path)})
    try:
        stat = path.stat()
    except OSError:
        return False
    return doc is not None and (doc.get("size"), doc.get("mtime_ns")) == (
        stat.st_size, stat.st_mtime_ns)


def calibrated_file(policy: AppPolicy, name: str, overwrite: bool) -> Path:
    """Where the calibrated checkpoint ``name`` (from a form) is written: inside the server's
    weights folder (:func:`~qualiclip_plugin.trust.policy.calibrated_checkpoint_file`), never
    over a file the plugin did not write, nor over its own earlier checkpoint unless
    ``overwrite``.

    Raises:
        RequestError: names the file or the name, and what to do.
    """
    path = calibrated_checkpoint_file(policy, name)
    if not path.exists():
        return path
    if not plugin_wrote_file(path):
        raise RequestError(f"a file named {path.name!r} that this plugin did not write is "
                           "already in the weights folder; choose another checkpoint name")
    if not overwrite:
        raise RequestError(f"a calibrated checkpoint named {path.name!r} is already in the "
                           "weights folder; choose another name, or turn on 'Replace my "
                           "earlier checkpoint' to replace it")
    return path


# --- report files -------------------------------------------------------------------------------
def report_file(policy: AppPolicy, dataset, name: str, overwrite: bool) -> Path:
    """Where the report ``name`` (from a form) of ``dataset`` is written: inside the dataset's
    report folder (:func:`~qualiclip_plugin.trust.policy.output_file`), and never over a file
    the plugin did not write (unless the admin allows replacing files), nor over its own
    earlier report unless ``overwrite``.

    Raises:
        RequestError: names the file or the name, and what to do.
    """
    from qualiclip.report.html import is_qualiclip_report  # loads torch: not at App start

    path = output_file(policy, dataset.name, str(dataset._doc.id), name)
    if not path.exists():
        return path
    if not policy.replace_files and not is_qualiclip_report(path):
        raise RequestError(f"a file named {path.name!r} that this plugin did not write is "
                           "already in the report folder; choose another name")
    if not overwrite:
        raise RequestError(f"a report named {path.name!r} is already in this dataset's report "
                           "folder; choose another name, or turn on 'Replace an existing "
                           "report' to replace it")
    return path
