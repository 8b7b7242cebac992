"""Exports of a cluster's SLM that keep tool calling where users serve models (``llm2slm export``).

- ``merged``: a Hugging Face folder, the LoRA merged into the base (PEFT ``merge_and_unload``), its tokenizer with
  a chat template that builds the prompt the adapter was trained on from an OpenAI request (tools included;
  components/serve/export_templates.py), and ``llm2slm_export.json`` (the prompt spec, the call format, the tools).
- ``vllm``: the adapter folder for vLLM's multi-LoRA (``--lora-modules cluster-<id>=...``), the chat template, the
  tool-call parser that reads this model's calls (``hermes``, plus a plugin for tokenizers without the
  ``<tool_call>`` tokens), guided decoding from the tools' JSON schema, and ``serve.sh``.
- ``gguf``: the merged folder converted by llama.cpp's ``convert_hf_to_gguf.py`` and an Ollama ``Modelfile``
  (``FROM`` the merged GGUF, ``TEMPLATE`` with tools, the stop token).

The call format every export names is components/slm/prompt.py's: one ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` line per call, the format of Hermes 2 Pro (and Qwen 2.5) that vLLM's ``hermes`` parser reads.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from components.core.schema import CallRecord
from components.serve.export_templates import chat_template, is_chatml, ollama_template, template_gaps
from components.slm.llama_cpp_engine import LLAMA_CPP_ENV, llama_cpp_dir
from components.slm.prompt import tool_name
from components.slm.prompt_pruning import PROMPT_SPEC_FILE, PromptSpec, load_prompt_spec

EXPORT_MANIFEST = "llm2slm_export.json"
TOOL_CALL_FORMAT = '<tool_call>{"name": <tool>, "arguments": {<JSON object>}}</tool_call> (one line per call)'
VLLM_TOOL_PARSER = "hermes"
PLUGIN_PARSER = "llm2slm_hermes"


def cluster_tools(records: list[CallRecord]) -> list[dict[str, Any]]:
    """The tools a cluster's calls offer, each once (its first schema seen), in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        for tool in record.tools:
            seen.setdefault(tool_name(tool), tool)
    return [tool for name, tool in seen.items() if name]


def _spec_of(adapter_dir: str | None) -> PromptSpec | None:
    return load_prompt_spec(adapter_dir) if adapter_dir else None


def _manifest(
    cluster_id: int, base_model: str, adapter_dir: str | None, spec: PromptSpec | None, tools: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "cluster": cluster_id,
        "model_id": f"cluster-{cluster_id}",
        "base_model": base_model,
        "adapter_dir": adapter_dir,
        "prompt_spec": spec.model_dump(mode="json") if spec is not None else None,
        "answers": spec.answers if spec is not None else "any",
        "max_tool_calls": spec.max_tool_calls if spec is not None else None,
        "tool_call_format": TOOL_CALL_FORMAT,
        "chat_template_gaps": template_gaps(spec),
        "tools": tools,
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def export_merged(
    cluster_id: int, base_model: str, adapter_dir: str | None, out: Path, tools: list[dict[str, Any]] | None = None
) -> Path:
    """The cluster's model as one Hugging Face folder (float32, adapter merged) whose chat template keeps tools."""
    from peft import PeftModel

    from components import slm

    model, tokenizer = slm.load_model(base_model, adapter_dir)
    spec = getattr(model, slm.PROMPT_SPEC_ATTRIBUTE, None)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.chat_template = chat_template(spec, _base_template(tokenizer))
    tokenizer.save_pretrained(out)
    (out / PROMPT_SPEC_FILE).unlink(missing_ok=True)  # the template builds the prompt; the spec is in the manifest
    _write_json(
        out / EXPORT_MANIFEST, {**_manifest(cluster_id, base_model, adapter_dir, spec, tools or []), "format": "merged"}
    )
    return out


def _base_template(tokenizer: Any) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ValueError("the tokenizer has no chat template to build the export's on")
    return template


def guided_decoding(tools: list[dict[str, Any]], spec: PromptSpec | None) -> dict[str, Any]:
    """What a vLLM request sends to decode under the tools' schema: the Lark grammar of the whole answer (for the
    ``guidance`` backend, llguidance, the engine components/slm/grammar.py uses) and the JSON schema of one call."""
    from components.slm.grammar import call_schema, tool_call_grammar

    if not tools:
        return {}
    required = spec is not None and spec.answers == "tool_calls"
    max_calls = spec.max_tool_calls if spec is not None else None
    grammar = tool_call_grammar(tools, required, max_calls)
    return {
        "backend": "guidance",
        "call_json_schema": call_schema(tools),
        "lark_grammar": grammar,
        # vLLM >= 0.10 (`structured_outputs`); older releases read {"guided_grammar": ...} instead.
        "request_extra_body": {"structured_outputs": {"grammar": grammar}},
    }


def export_vllm(
    cluster_id: int,
    base_model: str,
    adapter_dir: str,
    out: Path,
    tools: list[dict[str, Any]] | None = None,
    base_folder: str | None = None,
) -> Path:
    """A folder vLLM serves with multi-LoRA: ``adapter/``, ``chat_template.jinja``, the parser plugin,
    ``guided_decoding.json`` and ``serve.sh`` (the ``--lora-modules`` line), described by ``bundle.json``."""
    from transformers import AutoTokenizer

    from components.slm import prepare_model

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise ValueError(f"{adapter_dir}: not a LoRA adapter (vLLM's LoRA modules need one; export --format merged)")
    spec = _spec_of(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    template = chat_template(spec, _base_template(tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(adapter_dir, out / "adapter", dirs_exist_ok=True)
    (out / "chat_template.jinja").write_text(template)
    shutil.copy(Path(__file__).with_name("vllm_tool_parser.py"), out / "llm2slm_tool_parser.py")
    guided = guided_decoding(tools or [], spec)
    _write_json(out / "guided_decoding.json", guided)
    base_folder = base_folder or prepare_model(base_model)
    vocab = tokenizer.get_vocab()
    has_tokens = "<tool_call>" in vocab and "</tool_call>" in vocab
    parser = VLLM_TOOL_PARSER if has_tokens else PLUGIN_PARSER
    name = f"cluster-{cluster_id}"
    command = [
        'vllm serve "$BASE_MODEL"',
        "--enable-lora",
        f"--max-lora-rank {_lora_rank(adapter_dir)}",
        f'--lora-modules "{name}=$BUNDLE/adapter"',
        '--chat-template "$BUNDLE/chat_template.jinja"',
        "--enable-auto-tool-choice",
        f"--tool-call-parser {parser}",
    ]
    if not has_tokens:
        command.append('--tool-parser-plugin "$BUNDLE/llm2slm_tool_parser.py"')
    command.append("--structured-outputs-config.backend guidance")
    script = "#!/bin/sh\n# Serve this bundle with vLLM (GPU); runtime adapter swaps need VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.\n"
    # Paths enter the shell text only quoted: a folder may hold spaces, `$` or quotes.
    script += f"BASE_MODEL=${{BASE_MODEL:-{shlex.quote(base_folder)}}}\n"
    script += 'BUNDLE=${BUNDLE:-$(dirname "$0")}\n'
    script += "exec " + " \\\n  ".join(command) + ' "$@"\n'
    (out / "serve.sh").write_text(script)
    (out / "serve.sh").chmod(0o755)
    manifest = _manifest(cluster_id, base_model, str(adapter_dir), spec, tools or [])
    manifest.update(
        format="vllm",
        base_folder=base_folder,
        lora_modules=f"{name}={out.resolve() / 'adapter'}",
        tool_call_parser=parser,
        tool_call_parser_reason=(
            'the SLM writes Hermes 2 Pro\'s call format, one <tool_call>{"name", "arguments"}</tool_call> per '
            "call, which vLLM's `hermes` parser reads (regex <tool_call>(.*?)</tool_call>, then json.loads of "
            "name and arguments)"
            + (
                ""
                if has_tokens
                else "; this tokenizer has no <tool_call>/</tool_call> tokens, which the `hermes` parser requires "
                "at start-up, so the bundle's plugin registers `llm2slm_hermes`: the same parsing on the text"
            )
        ),
        tokenizer_has_tool_call_tokens=has_tokens,
        guided_decoding="guided_decoding.json" if guided else None,
    )
    _write_json(out / "bundle.json", manifest)
    return out


def _lora_rank(adapter_dir: str) -> int:
    rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 16)
    return next(size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= rank)


def export_gguf(
    cluster_id: int,
    base_model: str,
    adapter_dir: str | None,
    out: Path,
    tools: list[dict[str, Any]] | None = None,
    llama_cpp: str | Path | None = None,
    outtype: str = "f16",
) -> Path:
    """``model.gguf`` (the merged model, converted by llama.cpp's script) and an Ollama ``Modelfile``."""
    tree = llama_cpp_dir(llama_cpp)
    if tree is None:
        raise FileNotFoundError(
            f"GGUF needs llama.cpp's convert_hf_to_gguf.py: pass --llama-cpp DIR or set {LLAMA_CPP_ENV} (it ships "
            "in llama-cpp-python's sdist under vendor/llama.cpp)"
        )
    out.mkdir(parents=True, exist_ok=True)
    merged = export_merged(cluster_id, base_model, adapter_dir, out / "merged", tools)
    target = out / "model.gguf"
    converted = subprocess.run(
        [
            sys.executable,
            str(tree / "convert_hf_to_gguf.py"),
            str(merged),
            "--outfile",
            str(target),
            "--outtype",
            outtype,
        ],
        capture_output=True,
        text=True,
    )
    if converted.returncode != 0:  # e.g. sentencepiece missing (the script imports it for every llama)
        raise RuntimeError(f"convert_hf_to_gguf.py failed: {converted.stderr.strip()[-1500:]}")
    manifest = json.loads((merged / EXPORT_MANIFEST).read_text())
    spec = PromptSpec.model_validate(manifest["prompt_spec"]) if manifest["prompt_spec"] else None
    (out / "Modelfile").write_text(modelfile("./model.gguf", spec, _base_template_of(merged)))
    _write_json(out / EXPORT_MANIFEST, {**manifest, "format": "gguf", "gguf": target.name, "outtype": outtype})
    return out


def _base_template_of(folder: Path) -> str:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    return template or ""


def modelfile(source: str, spec: PromptSpec | None, template: str, adapter: str | None = None) -> str:
    """An Ollama Modelfile: ``FROM`` the GGUF (plus ``ADAPTER`` for a LoRA GGUF), the tool-aware ``TEMPLATE``,
    greedy decoding and ChatML's stop token."""
    if not is_chatml(template):
        raise ValueError("the Ollama template is written for ChatML models (<|im_start|>/<|im_end|>)")
    lines = [f"FROM {source}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append('TEMPLATE """' + ollama_template(spec) + '"""')
    lines += ['PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"
