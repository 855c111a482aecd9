"""Training regularizers: frozen local teachers, semantic alignment, code perturbation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anytok.regularizers import (
    FrozenFeatureModel,
    SemanticRegularizer,
    TrainingOptions,
    perturb_codes,
    perturb_latent,
    resample_grid,
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(path)
    return path


def test_frozen_teacher_features_grid_and_errors(teacher: Path, tmp_path: Path) -> None:
    model = FrozenFeatureModel(teacher)
    features, grid = model(torch.rand(2, 3, 48, 64) * 2 - 1)  # resized to its 32x32
    assert grid == (4, 4) and features.shape == (2, 16, 32)  # CLS dropped
    assert not any(p.requires_grad for p in model.model.parameters())
    with pytest.raises(FileNotFoundError, match=r"not a model directory \(no config.json\)"):
        FrozenFeatureModel(tmp_path)


def test_teacher_input_size_follows_its_image_processor(teacher: Path, tmp_path: Path) -> None:
    # DINOv2's processor feeds 224 x 224 crops (REPA's size) while its config says 518: the
    # processor's crop_size wins, then a square size, then the config; image_size overrides.
    import shutil

    from transformers import BitImageProcessor, SiglipImageProcessor

    with_processor = tmp_path / "dinov2_like"
    shutil.copytree(teacher, with_processor)
    BitImageProcessor(
        size={"shortest_edge": 24}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(with_processor)
    images = torch.rand(2, 3, 48, 64) * 2 - 1
    features, grid = FrozenFeatureModel(with_processor)(images)
    assert grid == (2, 2) and features.shape == (2, 4, 32)  # 16 / patch 8
    assert FrozenFeatureModel(with_processor, image_size=40)(images)[1] == (5, 5)
    siglip_like = tmp_path / "siglip_like"
    shutil.copytree(teacher, siglip_like)
    SiglipImageProcessor(size={"height": 24, "width": 24}).save_pretrained(siglip_like)
    assert FrozenFeatureModel(siglip_like).image_size == 24
    assert FrozenFeatureModel(teacher).image_size == 32  # no processor file: the config
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        FrozenFeatureModel(teacher, image_size=-2)


def test_semantic_loss_trains_projector_and_student_only(teacher: Path) -> None:
    reg = SemanticRegularizer(16, teacher, weight=0.5, hidden=32)
    student = torch.randn(2, 9, 16, requires_grad=True)
    loss = reg(student, (3, 3), torch.rand(2, 3, 32, 32) * 2 - 1)
    assert 0 <= float(loss) <= 1.0  # weight * (1 - cos) with cos in [-1, 1]
    loss.backward()
    assert student.grad is not None and reg.projector[0].weight.grad is not None
    assert set(reg.state_dict()) == {
        f"projector.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")
    }


def test_semantic_loss_falls_when_optimised(teacher: Path) -> None:
    torch.manual_seed(0)
    reg = SemanticRegularizer(8, teacher, weight=1.0, hidden=32)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    student = torch.randn(4, 16, 8, requires_grad=True)
    opt = torch.optim.Adam([student, *reg.parameters()], lr=1e-2)
    first = None
    for _ in range(60):
        loss = reg(student, (4, 4), images)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_resample_grid() -> None:
    x = torch.arange(4.0).view(1, 4, 1)
    assert torch.equal(resample_grid(x, (2, 2), (2, 2)), x)
    up = resample_grid(x, (2, 2), (4, 4))
    assert up.shape == (1, 16, 1)
    assert resample_grid(torch.randn(2, 5, 3), (5,), (4, 4)).shape == (2, 16, 3)


def test_perturb_codes_rate_and_range() -> None:
    codes = torch.stack(
        [torch.randint(0, 1000, (4, 64, 64)), torch.randint(0, 10, (4, 64, 64))], dim=1
    )
    gen = torch.Generator().manual_seed(0)
    noisy = perturb_codes(codes, [1000, 10], 0.3, gen)
    changed = (noisy != codes).float().mean().item()
    assert 0.25 < changed < 0.31  # 30% replaced; 1/10 of level-1 draws repeat the code
    assert int(noisy[:, 1].max()) < 10 and int(noisy.min()) >= 0
    assert perturb_codes(codes, [1000, 10], 0.0) is codes
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        perturb_codes(codes, [1000, 10], 1.5)


def test_perturb_latent_scale() -> None:
    latent = torch.randn(8, 4, 16, 16) * 3
    noisy = perturb_latent(latent, 0.5, torch.Generator().manual_seed(0))
    assert abs((noisy - latent).std().item() - 1.5) < 0.1
    assert perturb_latent(latent, 0.0) is latent


def test_training_options_perturb_only_in_training() -> None:
    from anytok.quantizers import build

    quantizer = build("fsq", dim=3, levels=[5, 5, 5]).eval()
    options = TrainingOptions(4, latent_perturbation=0.5)
    z = torch.randn(2, 3, 8, 8)
    codes = quantizer.encode(z.movedim(1, -1)).movedim(-1, 1)
    quantized = quantizer.decode(codes.movedim(1, -1)).movedim(-1, 1)
    assert torch.equal(options.eval().perturb(quantizer, quantized, codes), quantized)
    changed = options.train().perturb(quantizer, quantized, codes)
    assert 0.3 < (changed != quantized).any(dim=1).float().mean() < 0.6
    assert options.losses(torch.randn(2, 4, 4), (2, 2), torch.randn(2, 3, 8, 8)) == {}


def test_latent_perturbation_is_a_fraction_of_positions_for_multi_level_codes() -> None:
    """One draw per position for all its levels: drawn per level, a 4-level RVQ had 34% of
    its positions replaced at ``latent_perturbation=0.1``."""
    from anytok.quantizers import build

    torch.manual_seed(0)
    quantizer = build("rvq", dim=4, num_quantizers=4, codebook_size=64).eval()
    codes = torch.randint(0, 64, (8, 4, 32, 32))
    quantized = quantizer.decode(codes.movedim(1, -1)).movedim(-1, 1)
    changed = (
        TrainingOptions(4, latent_perturbation=0.1).train().perturb(quantizer, quantized, codes)
    )
    assert 0.08 < (changed != quantized).any(dim=1).float().mean() < 0.12


def test_teacher_weights_load_on_first_use_and_exports_drop_the_teacher(
    teacher: Path, tmp_path: Path
) -> None:
    """Building a model reads only the teacher's config.json; an export has no teacher, so it
    loads where the teacher folder does not exist (it raised FileNotFoundError)."""
    import shutil

    import anytok
    from anytok.checkpoint import save_checkpoint
    from anytok.train import export_run

    local = tmp_path / "dino"
    shutil.copytree(teacher, local)
    model = anytok.create_model("vqgan", tiny=True, semantic_teacher=str(local))
    assert model.options.semantic.teacher._model is None  # not loaded by building
    out = model.train()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert torch.isfinite(out.losses["semantic"])
    step = tmp_path / "run" / "checkpoints" / "step_000004"
    save_checkpoint(model, step / "ema")
    (step / "state.json").write_text('{"step": 4}')
    export_run(tmp_path / "run", tmp_path / "export")
    shutil.rmtree(local)
    exported = anytok.load(tmp_path / "export").eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(
            exported.decode(exported.encode(x)), model.eval().decode(model.encode(x))
        )


def test_a_full_clip_checkpoint_teaches_through_its_vision_tower(tmp_path: Path) -> None:
    """CLIP / SigLIP releases are text + vision models; their forward wants input_ids, so
    the first training step failed."""
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    CLIPModel(
        CLIPConfig(
            vision_config=dict(small, image_size=32, patch_size=8),
            text_config=dict(small, vocab_size=99),
            projection_dim=16,
        )
    ).save_pretrained(tmp_path / "clip")
    features, grid = FrozenFeatureModel(tmp_path / "clip")(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert grid == (4, 4) and features.shape == (2, 16, 32)


def test_export_builds_the_model_without_reading_the_teacher_folder(
    teacher: Path, tmp_path: Path
) -> None:
    """A run copied to another machine has no teacher folder: export_run loaded the
    checkpoint with its teacher first (FileNotFoundError) and dropped it only after."""
    import shutil

    import anytok
    from anytok.checkpoint import read_config, save_checkpoint
    from anytok.train import export_run

    local = tmp_path / "dino"
    shutil.copytree(teacher, local)
    model = anytok.create_model("vqgan", tiny=True, semantic_teacher=str(local))
    step = tmp_path / "run" / "checkpoints" / "step_000004"
    save_checkpoint(model, step / "ema")
    (step / "state.json").write_text('{"step": 4}')
    shutil.rmtree(local)  # the teacher is gone before the export
    export_run(tmp_path / "run", tmp_path / "export")
    assert read_config(tmp_path / "export")["config"]["semantic_teacher"] is None
    exported = anytok.load(tmp_path / "export")
    expected = {k: v for k, v in model.state_dict().items() if "semantic.projector" not in k}
    assert exported.state_dict().keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(exported.state_dict()[name], value), name


def test_audio_teacher_normalises_each_item_when_its_processor_says_so(tmp_path: Path) -> None:
    """wav2vec2-large-lv60 / WavLM-large style teachers (``do_normalize: true``) got the raw
    waveform; their features must be those of the processor's zero-mean unit-variance input."""
    import json

    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    processor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "do_normalize": True,
        "sampling_rate": 16000,
        "feature_size": 1,
        "padding_value": 0.0,
        "return_attention_mask": True,
    }
    (tmp_path / "w2v" / "preprocessor_config.json").write_text(json.dumps(processor))
    teacher = FrozenFeatureModel(tmp_path / "w2v", "audio", sample_rate=16000)
    audio = 0.05 * torch.randn(2, 1, 4000) + torch.tensor([0.02, -0.3]).view(2, 1, 1)
    ours, _ = teacher(audio)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "w2v")
    for i in range(2):
        values = extractor(audio[i, 0].numpy(), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            reference = teacher.model(input_values=values.input_values).last_hidden_state
        torch.testing.assert_close(ours[i : i + 1], reference, atol=1e-4, rtol=1e-4)
    processor["do_normalize"] = False  # then the waveform goes in as it is
    (tmp_path / "w2v" / "preprocessor_config.json").write_text(json.dumps(processor))
    raw, _ = FrozenFeatureModel(tmp_path / "w2v", "audio")(audio)
    with torch.no_grad():
        reference = teacher.model(input_values=audio[:, 0]).last_hidden_state
    torch.testing.assert_close(raw, reference, atol=1e-5, rtol=1e-5)


def test_neighbour_perturbation_in_a_fraction_of_items() -> None:
    """RobusTok's error model: a replaced code becomes one of its delta nearest codebook
    neighbours, in a beta fraction of the items (it was a uniformly random code everywhere)."""
    from anytok.quantizers import build

    torch.manual_seed(0)
    k, dim, delta = 64, 4, 3
    quantizer = build("vq", dim=dim, codebook_size=k).eval()
    codes = torch.randint(0, k, (64, 1, 8, 8))
    quantized = quantizer.decode(codes.movedim(1, -1)).movedim(-1, 1)
    options = TrainingOptions(
        dim, latent_perturbation=0.25, perturbation_neighbours=delta, perturbation_items=0.5
    ).train()
    perturbed = options.perturb(quantizer, quantized, codes)
    changed = (perturbed != quantized).any(dim=1)  # (b, h, w)
    items = changed.flatten(1).any(dim=1)
    assert 0.3 < items.float().mean() < 0.7  # about half of the items
    assert 0.15 < changed[items].float().mean() < 0.35  # 25% of a perturbed item's positions
    vectors = quantizer.decode(torch.arange(k).view(1, k, 1))[0]
    distances = torch.cdist(vectors, vectors)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(delta, dim=1, largest=False).indices  # (K, delta)
    new = torch.cdist(perturbed.movedim(1, -1)[changed], vectors).argmin(dim=1)
    original = codes[:, 0][changed]
    assert (nearest[original] == new[:, None]).any(dim=1).all()
    with pytest.raises(ValueError, match="more than the 16384"):
        big = build("vq", dim=dim, codebook_size=20000).eval()
        options.perturb(big, quantized, codes)
    with pytest.raises(ValueError, match="single-level quantizer"):
        rvq = build("rvq", dim=dim, num_quantizers=2, codebook_size=k).eval()
        options.perturb(rvq, quantized, codes.repeat(1, 2, 1, 1))
    defaults = TrainingOptions(dim, latent_perturbation=0.25).train()
    assert defaults.perturbation_neighbours == 0 and defaults.perturbation_items == 1.0


@pytest.mark.parametrize("arch", ["vqgan", "titok_s128"])
def test_image_tokenizers_pass_the_robustok_options_through(arch: str) -> None:
    """Recipes set them under model.config; only FlexTok took them."""
    import anytok

    model = anytok.create_model(
        arch, tiny=True, latent_perturbation=0.1, perturbation_neighbours=2, perturbation_items=0.5
    )
    assert model.options.perturbation_neighbours == 2
    assert model.options.perturbation_items == 0.5
