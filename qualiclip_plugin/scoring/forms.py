"""App form pieces shared by the operators: the weights list, the inline "Cannot run" box,
result dialogs without empty rows, and what the scoring form checks before execution.

Top-level imports are FiftyOne's operator types only: forms are built on every keystroke.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone.operators.types as types

from qualiclip_plugin.trust.policy import (
    AppPolicy,
    check_weights,
    weights_choices,
    weights_note,
    weights_unavailable,
)
from qualiclip_plugin.trust.request import DEFAULT_WEIGHTS, RequestError

#: Operator icon, relative to the plugin folder (the one holding ``fiftyone.yml``). Both layouts
#: carry the file: ``assets/icon.svg`` at the repository root and in ``qualiclip_plugin/``.
ICON = "/assets/icon.svg"
CANNOT_RUN = "Cannot run"
DELEGATION_HELP = ("Background runs (Schedule, or 'Run in the background') need a worker "
                   "where this App server runs: `fiftyone delegated launch`; follow the job "
                   "with `fiftyone delegated list` (or the Runs page in FiftyOne Enterprise)")


NO_WEIGHTS = ("no weights are offered on this server: ask its admin to allow the official "
              "weights or a checkpoint folder (docs/plugin.md, 'Running on a shared App server')")


def cannot_run(inputs: types.Object, message: str) -> None:
    """The form's inline error box; ``invalid`` makes the server refuse execution too."""
    inputs.view("cannot_run", types.Error(label=CANNOT_RUN, description=message),
                invalid=True, error_message=message)


def weights_input(inputs: types.Object, params: dict[str, Any], policy: AppPolicy,
                  recorded: str | None, label: str = "Weights") -> str:
    """A dropdown of the weights this server offers; returns the value the form holds.

    Default: the weights the user chose (so editing another field keeps them), else the
    weights last used on the dataset when still offered, else the first offered weights this
    server can load now (the official ones unless they are neither cached nor downloadable).
    A value from outside the list (typed into a request) stays a text box, so the policy's
    refusal is shown instead of a bare "invalid value".
    """
    choices = weights_choices(policy)
    values = [c.value for c in choices]
    given = params.get("weights")
    loadable = [v for v in values if weights_unavailable(v, policy) is None]
    preferred = [given, recorded, DEFAULT_WEIGHTS]
    default = next((v for v in preferred if v in loadable), None)
    if default is None:
        default = loadable[0] if loadable else values[0] if values else None
    if given not in (None, "") and given not in values:
        inputs.str("weights", default=default, label=label)
        return str(given)
    dropdown = types.DropdownView()
    for choice in choices:
        dropdown.add_choice(choice.value, label=choice.label)
    inputs.enum("weights", values, default=default, label=label, view=dropdown,
                description="Weights offered on this server (admins: docs/plugin.md, 'Running on a "
                            "shared App server')")
    return str(given or default or "")


def weights_problem(weights: str, policy: AppPolicy) -> str | None:
    """Why ``weights`` cannot be used from the App now, or ``None`` (forms that load weights
    without a scoring request: the quality maps form)."""
    if not weights:
        return NO_WEIGHTS
    try:
        resolved = check_weights(weights, policy)
    except RequestError as exc:
        return str(exc)
    return weights_unavailable(resolved, policy)


def weights_notice(inputs: types.Object, weights: str) -> None:
    inputs.view("weights_note", types.Notice(label=weights_note(weights)))


def show_result(summary: dict[str, Any], labels: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``show_output`` params for a result dialog holding only the values ``summary`` has."""
    outputs = types.Object()
    results = {}
    for name, label in labels:
        value = summary.get(name)
        if value is None or value == []:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            outputs.str(name, label=label)
            results[name] = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        else:
            outputs.float(name, label=label) if isinstance(value, float) else \
                outputs.int(name, label=label)
            results[name] = round(value, 4) if isinstance(value, float) else value
    if "link" in summary:
        outputs.view("link", types.LinkView(label=summary["link"]["label"],
                                            href=summary["link"]["href"]))
    # The App reads `outputs` with Property.fromJSON: a Property's JSON, not an Object's.
    return dict(outputs=types.Property(outputs).to_json(), results=results)


def show_error(message: str, title: str = "Not run") -> dict[str, Any]:
    """``show_output`` params for a dialog with one sentence and nothing else."""
    outputs = types.Object()
    outputs.view("error", types.Error(label=title, description=message))
    return dict(outputs=types.Property(outputs).to_json(), results={})


def with_defaults(form: types.Property | types.Object, params: dict[str, Any]
                  ) -> dict[str, Any]:
    """``params`` completed with the form's defaults for the keys it lacks: what the App sends
    after showing the form, so checks in the form and in ``execute`` see the same request."""
    obj = form.type if isinstance(form, types.Property) else form
    defaults = {name: prop.default for name, prop in obj.properties.items()
                if getattr(prop, "default", None) is not None}
    return {**defaults, **(params or {})}


def notice(inputs: types.Object, name: str, text: str) -> None:
    inputs.view(name, types.Notice(label=text))
