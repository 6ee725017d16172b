"""User data is never destroyed: refuse to write fields and tags this plugin did not make.

What the plugin made is read from its run records (:mod:`qualiclip_plugin.trust.provenance`): each
records its score field, whether attribute fields were written, its flag field and flag tag; the
"Image quality" panel records the tags it writes in its own store.
Anything else that already holds values (a field, a tag on some sample) belongs to the user and
a run that would write it is refused before its first write, as saved views already are.
"""

from __future__ import annotations

from typing import Any

from qualiclip_plugin.scoring.writing import FieldLayout, schema_conflicts
from qualiclip_plugin.trust import provenance
from qualiclip_plugin.trust.request import RequestError, ScoreRequest

#: The "Image quality" panel's execution store (one per dataset): its saved thresholds, and the
#: tags it has written, which count as the plugin's here.
STORE_NAME = "qualiclip_panel"


def panel_store(dataset):
    """The panel's execution store for ``dataset`` (FiftyOne's ``ExecutionStore``)."""
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE_NAME, dataset._doc.id)


def written_tags(dataset) -> list[str]:
    """The tags the panel has written on ``dataset`` (they count as the plugin's)."""
    return list(panel_store(dataset).get("tags") or [])


def plugin_made(dataset) -> tuple[set[str], set[str]]:
    """``(fields, tags)`` the plugin's recorded runs on ``dataset`` wrote."""
    fields: set[str] = set()
    tags: set[str] = set()
    for record in provenance.all_recorded(dataset):
        field = record.get("field")
        options: dict[str, Any] = record.get("options") or {}
        if field:
            fields.update({field, f"{field}_error"})
            if options.get("pair_scores", True):
                fields.update(f"{field}_{name}" for name in record.get("pair_names") or ())
        if options.get("flag_field"):
            fields.add(options["flag_field"])
        if options.get("flag_tag"):
            tags.add(options["flag_tag"])
    tags.update(written_tags(dataset))  # the panel tags with them too
    return fields, tags


def check_writable(dataset, layout: FieldLayout, request: ScoreRequest,
                   ownership: bool = True) -> None:
    """Refuse a run whose fields exist with types it cannot write, or (``ownership``) hold the
    user's own values (:func:`check_not_user_data`; shards skip it: their queuing run checked).

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
    """Refuse a run whose fields or flag tag hold the user's own values.

    Raises:
        RequestError: names the field or tag and what to do instead.
    """
    made_fields, made_tags = plugin_made(dataset)
    schema = dataset.get_field_schema(flat=True)
    for name in layout.all_fields():
        if name in made_fields or name not in schema:
            continue
        if dataset.exists(name).count() == 0:
            continue  # declared but empty: nothing to lose
        if name == layout.score:
            raise RequestError(
                f"field '{name}' holds {dataset.exists(name).count()} values with no record of "
                "how they were made (written by apply_model or another tool); this plugin does "
                "not replace values it did not write: write to a new field, or clear that field "
                "yourself first")
        what = "flag field" if name == layout.flag else "field"
        raise RequestError(f"{what} '{name}' already exists and was not written by this plugin; "
                           "it is left untouched: choose another "
                           f"{'flag field' if name == layout.flag else 'score field name'}")
    tag = request.flag_tag if request.flagging else None
    if tag and tag not in made_tags and tag in dataset.count_sample_tags():
        raise RequestError(f"tag '{tag}' is already used on this dataset and was not set by this "
                           "plugin; flagging would add and remove it: choose another flag tag")
