"""Suite-wide: S1 encrypts its raw outputs with a key created on first use; tests (and the CLI subprocesses they
start) use a throwaway key file instead of the user's ~/.config/llm2slm/store.key."""

import os
import tempfile
from pathlib import Path


def pytest_configure(config):
    if not os.environ.get("LLM2SLM_STORE_KEY") and not os.environ.get("LLM2SLM_STORE_KEY_FILE"):
        os.environ["LLM2SLM_STORE_KEY_FILE"] = str(Path(tempfile.mkdtemp(prefix="llm2slm-key-")) / "store.key")
