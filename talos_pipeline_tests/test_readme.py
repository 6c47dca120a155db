"""The README's settings table: every setting of `core/settings.py`, with the default it has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from talos_pipeline.core.settings import SETTINGS, Setting

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
ROWS = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| (.*) \|$", README, flags=re.M))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.env)
def test_every_setting_has_a_row_with_its_default(setting: Setting):
    assert setting.env in ROWS, f"README.md has no row for {setting.env}"
    if setting.default:
        assert f"[`{setting.default}`]" in ROWS[setting.env], f"README.md gives {setting.env} another default"


def test_no_row_for_a_setting_that_does_not_exist():
    assert set(ROWS) <= {setting.env for setting in SETTINGS}
