"""Extension points of the loop: a model's own losses (the diffusion / flow-matching hook),
their recipe weights, and starting from existing weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import anytok
from anytok.checkpoint import save_checkpoint
from anytok.codecs.audio.seanet_fsq import SEANetFSQ
from anytok.codecs.base import TokenizerOutput
from anytok.data.synthetic import make_dataset
from anytok.registry import _ARCHS, get_arch, register
from anytok.train import read_log, train

TOY = "toy_diffusion_decoder_test"


class ToyDiffusionCodec(SEANetFSQ):
    """A codec whose forward also reports ``losses["diffusion"]``, as a diffusion decoder
    would: here ``(offset - 3)^2`` for one learnable scalar."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        out = super().forward(audio, lengths)
        out.losses["diffusion"] = (self.offset - 3.0) ** 2
        return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy_arch():
    # Registered for this test only: registry-driven tests elsewhere must not see it.
    base = get_arch("seanet_fsq_24khz")
    register(
        TOY,
        modality="audio",
        description="test-only codec with a diffusion loss",
        default_config=base.config(tiny=True),
        builder=ToyDiffusionCodec,
    )
    yield TOY
    _ARCHS.pop(TOY, None)


def recipe(data: Path, **loss: float) -> dict:
    return {
        "description": "diffusion hook test",
        "model": {"name": TOY},
        "data": {"train": str(data), "segment_seconds": 0.05, "num_workers": 0},
        "loss": {"l1": 0.0, "mel": 0.0, **loss},
        "optimizer": {"name": "SGD", "lr": 0.25, "schedule": "constant"},
        "train": {"steps": 15, "batch_size": 2, "precision": "fp32", "ema_decay": 0.0},
        "log": {"every": 1, "val_every": 0, "samples_every": 0, "progress": False},
        "checkpoint": {"every": 0, "final": False},
    }


def test_diffusion_loss_from_the_model_is_optimised(toy_arch: str, tmp_path: Path) -> None:
    make_dataset("audio", tmp_path / "data", 4, seconds=0.2)
    result = train(recipe(tmp_path / "data"), tmp_path / "run")
    assert result.model.offset.item() == pytest.approx(3.0, abs=0.05)  # driven by it alone
    logged = [r for r in read_log(tmp_path / "run") if "loss/diffusion" in r]
    assert len(logged) == 15 and logged[-1]["loss/diffusion"] < logged[0]["loss/diffusion"]
    assert logged[0]["loss/reconstruction"] == 0.0  # no reconstruction term was asked for


def test_aux_weights_rescale_model_losses(toy_arch: str, tmp_path: Path) -> None:
    make_dataset("audio", tmp_path / "data", 4, seconds=0.2)
    cfg = recipe(tmp_path / "data", l1=1.0)
    cfg["loss"]["aux"] = {"diffusion": 0.0, "quantizer": 2.0}
    cfg["loss"]["balancer"] = {"enabled": True}
    cfg["optimizer"] = {"name": "Adam", "lr": 1e-3}
    result = train(cfg, tmp_path / "run")
    assert result.model.offset.item() == 0.0  # weight 0: the diffusion loss has no effect
    assert result.model.offset.grad is None or result.model.offset.grad.abs().sum() == 0


def test_init_from_starts_from_existing_weights(tmp_path: Path) -> None:
    make_dataset("image", tmp_path / "data", 8)
    start = anytok.create_model("cnn_fsq_256", tiny=True, seed=123)
    save_checkpoint(start, tmp_path / "start")
    cfg = Path(__file__).resolve().parents[1] / "recipes/image/cnn_fsq_256_tiny.yaml"
    overrides = [
        f"data.train={tmp_path / 'data'}",
        f"model.init_from={tmp_path / 'start'}",
        "train.steps=1",
        "optimizer.lr=1e-12",  # one negligible step: the weights stay those of the start
        "optimizer.warmup_steps=0",
        "log.progress=false",
        "log.val_every=0",
        "log.samples_every=0",
        "checkpoint.final=false",
    ]
    result = train(cfg, tmp_path / "run", overrides=overrides)
    for name, value in start.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], value, atol=1e-6, rtol=0)


def test_init_from_an_export_trains_a_returning_teacher_projector_fresh(
    tmp_path: Path, capsys
) -> None:
    """An export drops the semantic projector with its teacher; starting a run from it with
    the teacher kept failed (missing keys). Every other missing key still fails."""
    from transformers import Dinov2Config, Dinov2Model

    from anytok.checkpoint import CheckpointError
    from anytok.train import load_recipe
    from anytok.train.config import to_dict

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    make_dataset("image", tmp_path / "data", 8, size=32)
    cfg = Path(__file__).resolve().parents[1] / "recipes/image/vqgan_tiny.yaml"
    quantizer = to_dict(load_recipe(cfg, ["data.train=x"]).model.config.quantizer)
    start = anytok.create_model("vqgan", tiny=True, seed=123, quantizer=quantizer)  # an export
    save_checkpoint(start, tmp_path / "start")
    overrides = [
        f"data.train={tmp_path / 'data'}",
        f"model.init_from={tmp_path / 'start'}",
        f"model.config.semantic_teacher={tmp_path / 'dino'}",
        "train.steps=1",
        "optimizer.lr=1e-12",
        "optimizer.warmup_steps=0",
        "log.progress=false",
        "log.val_every=0",
        "log.samples_every=0",
        "checkpoint.final=false",
    ]
    result = train(cfg, tmp_path / "run", overrides=overrides, device="cpu")
    assert "options.semantic.projector.0.weight" in capsys.readouterr().err
    state = result.model.state_dict()
    assert any(k.startswith("options.semantic.projector.") for k in state)
    for name, value in start.state_dict().items():
        if not name.startswith("quantizer."):  # the codebook's EMA moves in the step
            torch.testing.assert_close(state[name], value, atol=1e-6, rtol=0)
    # a projector present only in part, or any other missing key, still fails
    from anytok.train.loop import _load_init_from

    bias = "options.semantic.projector.0.bias"
    without_projector = {k: v for k, v in state.items() if "semantic.projector" not in k}
    first = next(iter(start.state_dict()))
    for broken in (
        {**without_projector, bias: state[bias]},
        {k: v for k, v in state.items() if k != first},
    ):
        with pytest.raises(CheckpointError, match="missing keys"):
            _load_init_from(result.model, broken, "init")
