"""Registry-driven tests: every registered architecture, at its tiny configuration, gets
shape, range, round-trip, save/load, batch-consistency and NaN checks for free."""

from __future__ import annotations

import math

import pytest
import torch

import anytok
from anytok import checkpoint
from anytok.checkpoint import save_checkpoint
from anytok.codecs import AudioTokenizer, ImageTokenizer, Tokenizer, VideoTokenizer
from anytok.registry import get_arch

ARCHS = anytok.list_models()


def tiny(name: str) -> Tokenizer:
    return anytok.create_model(name, tiny=True, seed=0).eval()


def sample_batch(
    model: Tokenizer, batch: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random media the model accepts, with varied valid lengths where time exists."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, AudioTokenizer):
        samples = model.hop_length * 12 + 5  # deliberately not a multiple of the hop
        audio = torch.rand(batch, model.channels, samples, generator=gen) * 1.6 - 0.8
        lengths = torch.tensor([samples - 3 * model.hop_length * (i % 3) for i in range(batch)])
        for i, n in enumerate(lengths):
            audio[i, :, n:] = 0
        return audio, lengths
    if isinstance(model, ImageTokenizer):
        h, w = model.resolution
        return torch.rand(batch, 3, h, w, generator=gen) * 2 - 1, None
    if isinstance(model, VideoTokenizer):
        h, w = model.resolution
        frames = 1 + 2 * model.temporal_factor + 1  # not of the form 1 + k*s: padding rule
        video = torch.rand(batch, 3, frames, h, w, generator=gen) * 2 - 1
        lengths = torch.tensor([frames - (i % 2) * model.temporal_factor for i in range(batch)])
        for i, n in enumerate(lengths):
            video[i, :, n:] = video[i, :, n - 1 : n]
        return video, lengths
    raise TypeError(type(model))


@pytest.mark.parametrize("name", ARCHS)
def test_registered_metadata(name: str) -> None:
    info = get_arch(name)
    assert info.modality in ("audio", "image", "video")
    assert info.description and info.paper
    assert "untrained" in info.pretrained
    assert info.default_tag in info.pretrained


@pytest.mark.parametrize("name", ARCHS)
def test_encode_decode_shapes_range_and_nan(name: str) -> None:
    model = tiny(name)
    media, lengths = sample_batch(model, batch=2)
    with torch.inference_mode():
        tokens = model.encode(media, lengths)
        recon = model.decode(tokens)
    spec = tokens.spec
    assert tokens.codes.dtype == torch.int64
    assert tokens.codes.shape[:2] == (2, spec.num_levels)
    assert tokens.codes.ndim == 2 + len(spec.layout)
    sizes = torch.tensor(spec.codebook_sizes).view(1, -1, *([1] * len(spec.layout)))
    assert bool((tokens.codes >= 0).all()) and bool((tokens.codes < sizes).all())
    assert torch.isfinite(recon).all()
    if isinstance(model, AudioTokenizer):
        frames = math.ceil(media.shape[-1] / model.hop_length)
        assert tokens.codes.shape[-1] == frames
        assert recon.shape == (2, model.channels, frames * model.hop_length)
        assert tokens.lengths is not None
        assert tokens.lengths.tolist() == [math.ceil(int(n) / model.hop_length) for n in lengths]
    elif isinstance(model, ImageTokenizer):
        if spec.layout == ("sequence",):  # 1D tokenizers (TiTok, FlexTok): a fixed length
            assert tokens.codes.shape[-1] == model.num_tokens
        else:
            f = model.downsample_factor
            assert tokens.codes.shape[-2:] == (media.shape[-2] // f, media.shape[-1] // f)
        assert recon.shape == media.shape
    else:
        latent_t = model.latent_frames(media.shape[2])
        assert tokens.codes.shape[2] == latent_t
        assert recon.shape[2] == 1 + (latent_t - 1) * model.temporal_factor
        assert recon.shape[-2:] == media.shape[-2:]


@pytest.mark.parametrize("name", ARCHS)
def test_other_float_dtypes_are_cast_and_integers_refused(name: str) -> None:
    # fp64 media (NumPy's default) is cast to the weights' dtype: the same codes as fp32,
    # not a dtype clash deep inside the first conv; NumPy arrays are taken as tensors; a
    # path is pointed to encode_file; integer media is named as the problem.
    model = tiny(name)
    media, lengths = sample_batch(model, batch=1, seed=3)
    with torch.inference_mode():
        tokens = model.encode(media, lengths)
        assert torch.equal(model.encode(media.double(), lengths).codes, tokens.codes)
        assert torch.equal(model.encode(media.numpy(), lengths).codes, tokens.codes)
        with pytest.raises(TypeError, match=r"got the path 'x\.wav'; encode a file with"):
            model.encode("x.wav")
        assert model(media.double(), lengths).reconstruction.dtype == torch.float32
        with pytest.raises(TypeError, match=r"must be float in \[-1, 1\], got torch.int16"):
            model.encode((media * 1000).to(torch.int16), lengths)
        # fp64 weights: refused by name (quantizers and samplers compute in fp32, autocast
        # has no fp64), not a dtype clash deep inside a layer in 27 of 33 families.
        tokens_fp32 = tokens
        model = model.double()
        with pytest.raises(TypeError, match=r"\.encode: weights are torch.float64; tokenizers"):
            model.encode(media, lengths)
        with pytest.raises(TypeError, match=r"\.decode: weights are torch.float64"):
            model.decode(tokens_fp32)


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_weights_encode_and_decode(name: str) -> None:
    # anytok.load(name, dtype=torch.bfloat16) / model.to(torch.bfloat16): 27 of 33
    # architectures failed on a fp32 tensor (quantizer output, sampler noise, positional
    # table) meeting bf16 layers. Tokens keep the spec and shape of the fp32 model's, media
    # comes back finite (bf16, or fp32 where an iSTFT or a sampler ends in fp32).
    model = tiny(name)
    media, lengths = sample_batch(model, batch=2, seed=4)
    with torch.inference_mode():
        expected = model.encode(media, lengths)
        model = model.to(torch.bfloat16)
        tokens = model.encode(media, lengths)
        recon = model.decode(tokens)
    assert tokens.spec == expected.spec and tokens.codes.shape == expected.codes.shape
    sizes = torch.tensor(tokens.spec.codebook_sizes).view(1, -1, *([1] * len(tokens.spec.layout)))
    assert bool((tokens.codes >= 0).all()) and bool((tokens.codes < sizes).all())
    assert recon.dtype in (torch.bfloat16, torch.float32) and bool(torch.isfinite(recon).all())


@pytest.mark.parametrize("name", ARCHS)
def test_forward_matches_encode_and_has_losses(name: str) -> None:
    model = tiny(name)
    media, lengths = sample_batch(model, batch=2, seed=1)
    with torch.inference_mode():
        out = model(media, lengths)
        tokens = model.encode(media, lengths)
    assert out.reconstruction.shape == media.shape
    assert torch.equal(out.tokens.codes, tokens.codes)
    assert all(v.ndim == 0 for v in out.losses.values())


@pytest.mark.parametrize("name", ARCHS)
def test_training_step_backpropagates(name: str) -> None:
    model = tiny(name).train()
    media, lengths = sample_batch(model, batch=2, seed=2)

    def encoder_gradient() -> bool:
        model.zero_grad(set_to_none=True)
        out = model(media, lengths)
        loss = (out.reconstruction - media).abs().mean() + sum(out.losses.values())
        loss.backward()
        grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
        return any(g is not None and g.abs().sum() > 0 for g in grads)

    if not encoder_gradient():
        # adaLN-Zero / in-context decoders start with closed gates: the first step opens
        # them, and from the second on the gradient must reach the encoder.
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 1e-2 * p.grad
        assert encoder_gradient(), "no gradient reached the encoder"


@pytest.mark.parametrize("name", ARCHS)
def test_save_load_gives_identical_tokens(name: str, tmp_path, monkeypatch) -> None:
    """Every family loads by the fast path (parameters built on the meta device, the saved
    tensors assigned): the same weights, the same ties, nothing left on meta, same tokens."""
    model = tiny(name)
    media, lengths = sample_batch(model, batch=2, seed=3)
    save_checkpoint(model, tmp_path / "ckpt")
    built_empty = []
    build_without_init = checkpoint._build_without_init
    monkeypatch.setattr(
        checkpoint,
        "_build_without_init",
        lambda build: built_empty.append(build_without_init(build)) or built_empty[-1],
    )
    loaded = anytok.load(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert built_empty == [loaded], "fell back to random initialisation + copy"
    ours, theirs = model.state_dict(keep_vars=True), loaded.state_dict(keep_vars=True)
    assert list(theirs) == list(ours)
    for key, value in ours.items():
        assert not theirs[key].is_meta and theirs[key].dtype == value.dtype, key
        assert torch.equal(theirs[key], value), key
        ties = [k for k in ours if ours[k] is value]
        assert [k for k in theirs if theirs[k] is theirs[key]] == ties, key
    assert [p.requires_grad for p in loaded.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]
    with torch.inference_mode():
        a = model.encode(media, lengths)
        b = loaded.encode(media, lengths)
    assert torch.equal(a.codes, b.codes)
    tokens_file = tmp_path / "t.tokens.safetensors"
    a.save(tokens_file)
    again = anytok.Tokens.load(tokens_file)
    assert again.spec == a.spec
    if a.lengths is None:
        assert again.lengths is None and torch.equal(again.codes, a.codes)
    else:  # positions past an item's length carry no meaning; only valid ones must survive
        assert torch.equal(again.lengths, a.lengths)
        for i, n in enumerate(a.lengths.tolist()):
            assert torch.equal(again.codes[i, :, :n], a.codes[i, :, :n])


@pytest.mark.parametrize("name", ARCHS)
def test_batch_of_one_equals_batch_of_four(name: str) -> None:
    """Every family, causal or not, gives each item of a batch of different lengths the
    codes it gets alone, whatever the batch holds past an item's length."""
    model = tiny(name)
    media, lengths = sample_batch(model, batch=4, seed=4)
    if lengths is not None:  # noise past each length, not the padding sample_batch leaves
        gen = torch.Generator().manual_seed(5)
        for i, n in enumerate(lengths.tolist()):
            media[i, :, n:] = torch.rand(media[i, :, n:].shape, generator=gen) - 0.5
    with torch.inference_mode():
        batched = model.encode(media, lengths)
        for i in range(4):
            if lengths is None:
                single = model.encode(media[i : i + 1])
                assert torch.equal(single.codes[0], batched.codes[i])
                continue
            n = int(lengths[i])
            item = media[i : i + 1, :, :n]
            single = model.encode(item)
            valid = (
                int(batched.lengths[i]) if batched.lengths is not None else batched.codes.shape[2]
            )
            assert single.codes.shape[2] == valid
            assert torch.equal(single.codes[0], batched.codes[i, :, :valid]), f"item {i} differs"


@pytest.mark.parametrize("name", [n for n in ARCHS if get_arch(n).modality != "image"])
def test_lengths_are_checked_and_empty_items_allowed(name: str) -> None:
    """``lengths`` as a list is taken; floats, a wrong count and out-of-range values are
    refused naming ``lengths``. An audio item of length 0 (an LM that stopped at once) is
    encoded and decodes to silence beside a full item, which keeps its codes."""
    model = tiny(name)
    media, _ = sample_batch(model, batch=2, seed=6)
    size = media.shape[2]
    with torch.inference_mode():
        full = model.encode(media[:1])
        listed = model.encode(media, [size, size - 1])
        assert torch.equal(listed.codes[0], full.codes[0])
        with pytest.raises(TypeError, match=r"\.encode: lengths must be integers"):
            model.encode(media, [size - 0.5, size])
        with pytest.raises(ValueError, match=r"lengths must have shape \(2,\), one per item"):
            model.encode(media, torch.tensor([size]))
        with pytest.raises(ValueError, match=rf"lengths must be in \[\d, {size}\]"):
            model.encode(media, torch.tensor([size + 1, size]))
        if not isinstance(model, AudioTokenizer):
            with pytest.raises(ValueError, match=rf"lengths must be in \[1, {size}\] frames"):
                model.encode(media, torch.tensor([0, size]))
            return
        tokens = model.encode(media, torch.tensor([size, 0]))
        assert tokens.lengths.tolist() == [full.codes.shape[-1], 0]
        assert torch.equal(tokens.codes[0], full.codes[0])
        audio = model.decode(tokens)
    assert audio.shape[0] == 2 and bool((audio[1] == 0).all()) and bool(audio[0].abs().sum() > 0)


@pytest.mark.parametrize("name", ARCHS)
def test_full_default_config_builds(name: str) -> None:
    """The real configuration (not only the tiny one) builds and has a sane spec."""
    model = anytok.create_model(name)
    if hasattr(model, "sample_steps"):  # diffusion decoders: one sampler step is enough here
        model.sample_steps = 1
    spec = model.spec
    assert spec.modality == get_arch(name).modality
    assert sum(p.numel() for p in model.parameters()) > 100_000
    if isinstance(model, AudioTokenizer):
        assert spec.frame_rate == model.sample_rate / model.hop_length
        media = torch.rand(1, model.channels, model.sample_rate // 4) - 0.5
    elif isinstance(model, ImageTokenizer) and spec.resize == "cover_crop":
        media = torch.rand(1, 3, *model.resolution) - 0.5  # fixed-size models (ViTs)
    elif isinstance(model, ImageTokenizer):
        media = torch.rand(1, 3, 2 * model.downsample_factor, 2 * model.downsample_factor) - 0.5
    else:
        side = 2 * model.spatial_factor
        media = torch.rand(1, 3, 1 + model.temporal_factor, side, side) - 0.5
    with torch.inference_mode():
        recon = model.decode(model.encode(media))
    assert torch.isfinite(recon).all()


def test_default_models_are_registered() -> None:
    for modality, name in anytok.DEFAULT_MODELS.items():
        assert get_arch(name).modality == modality


@pytest.mark.parametrize("name", ARCHS)
def test_empty_batch_encodes_to_empty_tokens(name: str) -> None:
    """A batch of 0 items gives 0 items: Snake's reshape, the per-frame GroupNorm's and
    omni's einops splits divided by the batch size (DAC, SNAC and every video family
    failed), and SNAC's, WavTokenizer's and TaDiCodec's decoders (level split, iSTFT, mel)
    have no empty batch."""
    model = tiny(name)
    media, _ = sample_batch(model, batch=1)
    with torch.inference_mode():
        one = model.encode(media)
        tokens = model.encode(media[:0])
        decoded = model.decode(tokens)
        expected = model.decode(one).shape
    assert tokens.codes.shape == (0, *one.codes.shape[1:])
    assert decoded.shape == (0, *expected[1:])
