"""The catalog of candidate SLMs (components/slm/catalog.yaml): what each model is, and whether it fits the constraints.

S4 benchmarks the catalog entries that params.yaml names (``select.candidates``); the rest of the catalog documents
the families users pick today, with their licence, size, context and footprint, so that widening the search is a
one-line change where a model hub is reachable.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")


class PublishedScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark: str
    score: float
    source: str  # where the figure was published


class Memory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bf16: float = Field(gt=0)  # GB of weights
    int4: float = Field(gt=0)


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    ref: str  # pypi:<asset>, a Hugging Face id or a local folder
    family: str
    parameters_m: float = Field(gt=0)
    context_length: int = Field(gt=0)
    licence: str
    instruction_tuned: bool
    chat_template: Literal["builtin", "catalog"]
    template: str | None = None  # the Jinja chat template when chat_template == "catalog"
    tool_calling: Literal["native", "prompted", "none"]
    memory_gb: Memory
    available_offline: bool
    availability: str
    published: list[PublishedScore] = []

    @model_validator(mode="after")
    def _template_where_needed(self) -> CatalogEntry:
        if (self.chat_template == "catalog") != (self.template is not None):
            raise ValueError(f"{self.name}: a template is given iff chat_template is 'catalog'")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[CatalogEntry]

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"catalog names must be unique; repeated: {', '.join(duplicated)}")
        return self

    def entry(self, name: str) -> CatalogEntry:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"'{name}' is not in the catalog; known: {', '.join(m.name for m in self.models)}")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The validated catalog; a clear error names the bad entry and field."""
    source = Path(path) if path else DEFAULT_CATALOG
    return Catalog.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))


@cache
def _default_catalog_refs() -> dict[str, str]:
    return {model.name: model.ref for model in load_catalog().models}


def catalog_ref(reference: str) -> str:
    """What a base model reference names, for ``from_pretrained``: a catalog name (what S4 picks, and what
    reports/router.yaml and ``--base-model`` carry, e.g. ``SmolLM2-135M-Instruct``) becomes its catalog ``ref``
    (``pypi:<asset>``, a hub id or a folder); an existing local folder stays that folder even when it has a catalog
    name (as ``from_pretrained`` prefers a folder to a hub id), and anything else (a hub id, ``pypi:...``) is
    returned unchanged. The one place a catalog name is read as a model: every loader goes through
    components/slm/loading.py's ``prepare_model``."""
    if Path(reference).is_dir():
        return reference
    return _default_catalog_refs().get(reference, reference)


class Constraints(BaseModel):
    """Deployment limits from params.yaml (``select.constraints``)."""

    model_config = ConfigDict(extra="forbid")

    licence_allow: list[str] = ["Apache-2.0", "MIT"]
    max_parameters_m: float = 4000
    max_memory_gb: float | None = None  # at the precision below
    memory_precision: Literal["bf16", "int4"] = "bf16"
    min_context_length: int = 0  # 0: the longest prompt of the clusters sets it (see required_context)


def constraint_violation(entry: CatalogEntry, constraints: Constraints, required_context: int = 0) -> str | None:
    """Why ``entry`` may not be used, or None."""
    if entry.licence not in constraints.licence_allow:
        return f"licence {entry.licence} is not in the allow-list {constraints.licence_allow}"
    if entry.parameters_m > constraints.max_parameters_m:
        return f"{entry.parameters_m:g}M parameters exceed the limit of {constraints.max_parameters_m:g}M"
    memory = getattr(entry.memory_gb, constraints.memory_precision)
    if constraints.max_memory_gb is not None and memory > constraints.max_memory_gb:
        return (
            f"{memory:g} GB of {constraints.memory_precision} weights exceed the limit of "
            f"{constraints.max_memory_gb:g} GB"
        )
    needed = max(constraints.min_context_length, required_context)
    if entry.context_length < needed:
        return f"context of {entry.context_length} tokens is shorter than the {needed} needed"
    return None


def install_chat_template(folder: str | Path, template: str) -> bool:
    """Give a local model folder whose tokenizer has no chat template the catalog's one (``chat_template.jinja``,
    which transformers reads on load), so every later step that loads the folder formats prompts the same way.
    Returns False when the folder already has a template (it is never overwritten)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").exists():
        return False
    config_path = folder / "tokenizer_config.json"
    if config_path.exists() and json.loads(config_path.read_text(encoding="utf-8")).get("chat_template"):
        return False
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return True
