"""S6 on the demo, scored against BFCL's own ground truth as well as against the LLM's logged answers.

    python benchmarks/bfcl_ground_truth.py --workdir runs/demo

S6 scores every system against the LLM's answers (the teacher is the reference, as in production, where no ground
truth exists). The demo's LLM answers are BFCL's first acceptable answer, so that reference is stricter than BFCL:
another acceptable value ("Northern" or "Southern" for a region the request leaves open) counts as wrong. Here
the same held-out answers (S4's base and S6's fine-tuned predictions) are also checked against BFCL's
possible answers (every acceptable value, optional arguments), with the harness's BFCL check
(components/scoring/tool_calls.py; benchmarks/bfcl_agreement.py compares it with BFCL's official checker).

A value S2 replaced in a record (a place in the prompt, hence in the call) is accepted in its replaced form: the
raw and the anonymized LLM answer are read side by side to learn the replacement. Prints one row per cluster and
system and writes them to <workdir>/reports/bfcl_ground_truth.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEMS = ["llm", "slm_base", "slm_finetuned"]


def _arguments(call: Any) -> dict[str, Any]:
    try:
        return call.parsed_arguments()
    except ValueError:  # not JSON, or not an object: nothing to learn a replacement from
        return {}


def expected_from_bfcl(ground_truth: list[dict[str, dict[str, list[Any]]]], raw: Any, anonymized: Any) -> list:
    """BFCL's possible answers as (OpenAI name, {argument: acceptable values}), plus each value S2 replaced."""
    from components.collect.demo_data import openai_function_name

    expected = []
    for index, (name, arguments) in enumerate((n, a) for entry in ground_truth for n, a in entry.items()):
        acceptable = {argument: list(options) for argument, options in arguments.items()}
        if index < len(raw.tool_calls) and index < len(anonymized.tool_calls):
            raw_arguments, anonymized_arguments = (
                _arguments(raw.tool_calls[index]),
                _arguments(anonymized.tool_calls[index]),
            )
            for argument, value in raw_arguments.items():
                if (
                    argument in acceptable
                    and argument in anonymized_arguments
                    and anonymized_arguments[argument] != value
                ):
                    acceptable[argument].append(anonymized_arguments[argument])
        expected.append((openai_function_name(name), acceptable))
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()

    import pandas as pd
    import yaml

    from components.collect.demo_data import load_bfcl
    from components.core.schema import read_records
    from components.evaluate.evaluation import EvaluateConfig
    from components.scoring.labels import score_against_labels
    from components.slm import parse_completion

    workdir = args.workdir.resolve()
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    evaluate_cfg = EvaluateConfig.model_validate(params.get("evaluate", {}))
    anonymized = {r.record_id: r for r in read_records(workdir / evaluate_cfg.curated)}
    raw = {r.record_id: r for r in read_records(workdir / params["collect"]["output"])}
    groups = [json.loads(line) for line in (workdir / params["demo_data"]["known_groups"]).read_text().splitlines()]
    items = {item["id"]: item for category in {g["category"] for g in groups} for item in load_bfcl(category)}
    bfcl_item = {g["record_id"]: items[g["bfcl_id"]] for g in groups}
    evaluation = {e["cluster_id"]: e for e in json.loads((workdir / evaluate_cfg.evaluation).read_text())["clusters"]}
    base = pd.read_parquet(workdir / evaluate_cfg.base_predictions)  # S4's: one row per call and candidate
    predictions = {"slm_finetuned": pd.read_parquet(workdir / evaluate_cfg.predictions)}

    # BFCL's answers as S4's ground-truth labels (components/scoring/labels.py), scored by the same function.
    labels = {
        record_id: expected_from_bfcl(bfcl_item[record_id]["ground_truth"], raw[record_id].response, record.response)
        for record_id, record in anonymized.items()
        if record_id in bfcl_item and record_id in raw
    }
    rows = []
    for cluster_id, entry in sorted(evaluation.items()):
        tuned = predictions["slm_finetuned"][predictions["slm_finetuned"].cluster_id == cluster_id]
        test = [anonymized[record_id] for record_id in tuned.record_id]
        predictions["slm_base"] = base[(base.cluster_id == cluster_id) & (base.candidate == entry["base_model"])]
        for system in SYSTEMS:
            if system == "llm":
                answers = [record.response for record in test]
            else:
                texts = dict(zip(predictions[system].record_id, predictions[system].text))
                answers = [parse_completion(texts[record.record_id]) for record in test]
            scores = score_against_labels(answers, test, "tool_call", labels)
            if scores is None or scores["n_labelled"] < len(test):
                raise SystemExit(f"cluster {cluster_id}: held-out calls without a BFCL item; is this a demo run?")
            rows.append(
                {
                    "cluster": cluster_id,
                    "system": system,
                    "n_test": len(test),
                    "full_call_vs_llm": round(entry["scores"][system]["full_call_match"], 3),
                    "full_call_vs_bfcl": round(scores["full_call_match"], 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print("\n| cluster | system | n_test | full-call match vs the LLM | full-call match vs BFCL's answers |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['cluster']} | {row['system']} | {row['n_test']} | {row['full_call_vs_llm']:.0%} | "
            f"{row['full_call_vs_bfcl']:.0%} |"
        )
    output = workdir / "reports/bfcl_ground_truth.json"
    output.write_text(json.dumps(rows, indent=2))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
