"""The App policy's settings and rules, without a dataset (qualiclip_plugin.trust.policy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qualiclip_plugin.trust.policy import (
    AppPolicy,
    PolicyError,
    check_weights,
    dataset_folder,
    output_file,
    weights_choices,
    weights_unavailable,
)


def _policy(tmp_path: Path, **changes) -> AppPolicy:
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    values = dict(registered=("qualiclip",), weights_dirs=(weights,), downloads=True,
                  output_root=tmp_path / "out", replace_files=False, max_workers=2)
    return AppPolicy(**{**values, **changes})


def test_settings_from_environment_win_over_plugin_settings(monkeypatch, tmp_path):
    import fiftyone as fo

    monkeypatch.setattr(fo.app_config, "plugins", {"@qualiclip/qualiclip": {
        "weights": "none", "output_dir": str(tmp_path / "from-config"), "downloads": False,
        "weights_dirs": [str(tmp_path / "a"), str(tmp_path / "b")]}})
    for key in ("WEIGHTS", "WEIGHTS_DIRS", "DOWNLOADS", "OUTPUT_DIR", "REPLACE_FILES",
                "MAX_WORKERS"):
        monkeypatch.delenv(f"QUALICLIP_APP_{key}", raising=False)
    policy = AppPolicy.current()
    assert policy.registered == () and policy.downloads is False
    assert policy.output_root == tmp_path / "from-config"
    assert policy.weights_dirs == (tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("QUALICLIP_APP_OUTPUT_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("QUALICLIP_APP_DOWNLOADS", "1")
    monkeypatch.setenv("QUALICLIP_APP_MAX_WORKERS", "0")
    policy = AppPolicy.current()
    assert policy.output_root == tmp_path / "from-env" and policy.downloads is True
    assert policy.max_workers == 0


def test_default_weights_folder_is_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("QUALICLIP_APP_WEIGHTS_DIRS", raising=False)
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    assert AppPolicy.current().weights_dirs == (tmp_path / "cache",)


def test_weights_list_and_checks(tmp_path):
    policy = _policy(tmp_path)
    folder = policy.weights_dirs[0]
    (folder / "sub").mkdir()
    (folder / "sub" / "ft.pth").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.pth").write_bytes(b"x")
    outside = tmp_path / "outside.pth"
    outside.write_bytes(b"x")
    (folder / "link.pth").symlink_to(outside)  # leads out of the folder: not offered
    values = [c.value for c in weights_choices(policy)]
    assert values == ["qualiclip", str((folder / "sub" / "ft.pth").resolve())]
    assert check_weights("qualiclip", policy) == "qualiclip"
    assert check_weights("sub/ft.pth", policy) == values[1]  # relative to the folder
    for bad in (str(outside), str(folder / "link.pth"), str(folder / ".." / "outside.pth"),
                "https://example.invalid/w.pth", "file:///etc/passwd", str(folder / "notes.txt")):
        with pytest.raises(PolicyError):
            check_weights(bad, policy)
    with pytest.raises(PolicyError, match="not offered"):
        check_weights("qualiclip", _policy(tmp_path, registered=()))


def test_registered_weights_unavailable_offline_only_when_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    assert weights_unavailable("qualiclip", _policy(tmp_path)) is None  # may download
    offline = _policy(tmp_path, downloads=False)
    assert "not available on this server" in weights_unavailable("qualiclip", offline)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "qualiclip.pth").write_bytes(b"x")
    assert weights_unavailable("qualiclip", offline) is None


def test_report_files_stay_in_the_dataset_folder(tmp_path):
    policy = _policy(tmp_path)
    # One folder per dataset: names that slug alike, or one name reused, never share one.
    assert dataset_folder(policy, "a b", "1") != dataset_folder(policy, "a-b", "2")
    assert dataset_folder(policy, "ds", "1") != dataset_folder(policy, "ds", "2")
    assert dataset_folder(policy, "../x", "1").parent == policy.output_root
    ours = output_file(policy, "ds", "1", "weekly")
    assert ours == dataset_folder(policy, "ds", "1") / "weekly.html"
    assert ours.parent.name.startswith("ds-")
    assert output_file(policy, "ds", "1", "weekly.html") == ours
    for bad in ("../x", "/etc/passwd", "a/b", "", ".hidden", "x" * 200, "a\nb"):
        with pytest.raises(PolicyError):
            output_file(policy, "ds", "1", bad)
