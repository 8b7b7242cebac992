"""Suite-wide: each test carries the marker of its tier (its folder: unit, flow, e2e, integration), so `-m` selects
tiers; S1 encrypts its raw outputs with a key created on first use, and tests (and the CLI subprocesses they start)
use a throwaway key file instead of the user's ~/.config/llm2slm/store.key."""

import os
import tempfile
from pathlib import Path

import pytest

TIERS = ("unit", "flow", "e2e", "integration")


def pytest_configure(config):
    if not os.environ.get("LLM2SLM_STORE_KEY") and not os.environ.get("LLM2SLM_STORE_KEY_FILE"):
        os.environ["LLM2SLM_STORE_KEY_FILE"] = str(Path(tempfile.mkdtemp(prefix="llm2slm-key-")) / "store.key")


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(root).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder ({', '.join(TIERS)})")
        item.add_marker(getattr(pytest.mark, tier))
