"""S5's CPU speed levers (components/finetune/speed.py) train the same model: the loss of the new path equals the old
path's on the same batch, the work saved is real, and the adapter still learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.schema import CallRecord
from components.finetune.speed import score_answer_positions_only
from components.finetune.train import FinetuneConfig, LoraSettings, build_trainer


def speed_config(**overrides: object) -> FinetuneConfig:
    settings = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_length": 256,
        "device": "cpu",
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0),
        **overrides,
    }
    return FinetuneConfig(**settings)


@pytest.fixture(autouse=True)
def _trl_as_shipped():
    """Each test starts and ends with TRL's own choice of scored positions (the switch is process-wide)."""
    score_answer_positions_only(False)
    yield
    score_answer_positions_only(False)


def first_batch_loss(trainer, *, backward: bool = False):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    if backward:
        loss.backward()
    return batch, loss


def lora_grads(trainer) -> dict:
    return {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


def test_answer_logits_only_gives_the_same_loss_and_gradients_on_fewer_rows(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl.trainer import utils as trl_utils

    scored_rows: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction

    class CountingKernel:
        @staticmethod
        def apply(hidden, *args):
            scored_rows.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingKernel)
    results = {}
    for fast in (False, True):
        config = speed_config(precision="fp32", answer_logits_only=fast, bf16_base_weights=False)
        trainer = build_trainer(tiny_model_dir, records, config, tmp_path / str(fast))
        batch, loss = first_batch_loss(trainer, backward=True)
        results[fast] = (loss.detach(), lora_grads(trainer), scored_rows[-1])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    # TRL on CPU scores every position but the last of each row; the new path only the labelled ones.
    assert results[False][2] == batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    assert results[True][2] == labelled < results[False][2] / 2
    assert torch.allclose(results[True][0], results[False][0], rtol=1e-5)
    old_grads, new_grads = results[False][1], results[True][1]
    assert old_grads and old_grads.keys() == new_grads.keys()
    assert all(torch.allclose(new_grads[name], old_grads[name], rtol=1e-4, atol=1e-7) for name in old_grads)


def test_bf16_base_weights_keep_the_loss_and_train_fp32_lora(
    tiny_model_dir: str, records: list[CallRecord], tmp_path: Path
) -> None:
    import torch

    losses = {}
    for bf16_weights in (False, True):
        config = speed_config(precision="bf16", bf16_base_weights=bf16_weights)
        trainer = build_trainer(tiny_model_dir, records, config, tmp_path / str(bf16_weights))
        with torch.no_grad():
            losses[bf16_weights] = float(first_batch_loss(trainer)[1])
    base = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.dtype == torch.bfloat16 and not base.requires_grad
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())  # the adapter (and Adam's state) in fp32
    # Autocast computes in bf16 either way; only the stored weights' rounding differs.
    assert losses[True] == pytest.approx(losses[False], rel=0.02)

    trainer.train()

    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before, after[name].detach()) for name, before in lora.items())
    assert all(after[name].dtype == torch.float32 and torch.isfinite(after[name]).all() for name in lora)
