"""Shared foundations: the call-record schema, params.yaml loading, pinned offline assets, the encrypted store and
the stage lock. Imports nothing else from components (every other package may import it)."""

from components.core.assets import ASSETS, asset_path, resolve_model_ref
from components.core.config import StepConfig, load_params, load_section, resolve
from components.core.schema import (
    CallRecord,
    ChatMessage,
    ToolCall,
    read_records,
    split_records,
    write_records,
    write_table,
)
from components.core.secure_store import StoreKeyError, load_key
from components.core.stage_lock import StageLock

__all__ = [
    "ASSETS",
    "CallRecord",
    "ChatMessage",
    "StageLock",
    "StepConfig",
    "StoreKeyError",
    "ToolCall",
    "asset_path",
    "load_key",
    "load_params",
    "load_section",
    "read_records",
    "resolve",
    "resolve_model_ref",
    "split_records",
    "write_records",
    "write_table",
]
