"""S5 finetune: train the selected base on a cluster's calls with TRL's SFTTrainer (LoRA a switch), resumable runs
keyed by a fingerprint, CPU or GPU; its training set (logs, augmentation, teacher). Imports core, slm, scoring and
curate (S2's config, for teacher output)."""

from components.finetune.runs import UnsupportedDeviceError
from components.finetune.train import FinetuneConfig, FinetuneResult, config_for_cluster, finetune, training_settings

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "UnsupportedDeviceError",
    "config_for_cluster",
    "finetune",
    "training_settings",
]
