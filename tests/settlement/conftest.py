"""Settlement fixtures: files go to a temporary SETTLEMENT_DIR; a known firm BIC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _settlement_settings(settings: Any, tmp_path: Path) -> Path:
    directory = tmp_path / "settlement"
    settings.SETTLEMENT_DIR = directory
    settings.SETTLEMENT_FIRM_BIC = "OPENUS33"
    return directory


@pytest.fixture
def settlement_dir(_settlement_settings: Path) -> Path:
    return _settlement_settings
