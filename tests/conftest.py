"""Shared pytest fixtures.

`shared_dir` points at ../shared (the project's read-only reference material).
A user's clone may not have it: tests that need it skip then -- unless
DISSECT_STUDY_REQUIRE_SHARED=1 (set by .ci/run), which turns the skip into a
failure so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.browser import chromium_browser, chromium_page  # noqa: F401 -- headless Chromium fixtures
from helpers.tiny import tiny_models  # noqa: F401 -- the fixture, for every test that asks for it

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        if os.environ.get("DISSECT_STUDY_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SHARED} is required (DISSECT_STUDY_REQUIRE_SHARED=1) but absent")
        pytest.skip(f"{SHARED} is absent (a user's clone); these tests need the shared reference data")
    return SHARED
