"""TaDiCodec-style speech tokenizer and its mel / vocoder stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchaudio

import anytok
from anytok.decoders.diffusion.vocoder import LogMel, MelConfig, MelVocoder
from anytok.registry import get_arch


def tiny():
    return anytok.create_model("tadicodec_24khz_6hz", tiny=True, seed=0).eval()


def speech(batch: int, samples: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(samples) / 16000
    f0 = 120 + 200 * torch.rand(batch, 1, 1, generator=gen)
    return (
        0.4 * torch.sin(2 * torch.pi * f0 * t)
        + 0.02 * torch.randn(batch, 1, samples, generator=gen)
    ).clamp(-1, 1)


def test_published_token_rates() -> None:
    for name, rate in (("tadicodec_24khz_6hz", 6.25), ("tadicodec_24khz_12hz", 12.5)):
        config = get_arch(name).config()
        hop = config["frames_per_token"] * config["mel"]["hop_length"]
        assert config["sample_rate"] / hop == rate
        assert config["quantizer"] == {"name": "bsq", "codebook_dim": 14}  # 16,384 codes


def test_tokens_shape_rate_and_padding_independence() -> None:
    model = tiny()
    assert model.hop_length == 256 and model.frame_rate == 62.5
    assert model.spec.codebook_sizes == (64,)
    audio = speech(2, 256 * 10)
    lengths = torch.tensor([256 * 10, 256 * 6])
    audio[1, :, 256 * 6 :] = 0
    tokens = model.encode(audio, lengths)
    assert tokens.codes.shape == (2, 1, 10)
    assert tokens.lengths.tolist() == [10, 6]
    alone = model.encode(audio[1:, :, : 256 * 6])
    # Padded frames are masked in the encoder: the short item's tokens are its own.
    assert torch.equal(alone.codes[0], tokens.codes[1, :, :6])


def test_a_batch_gives_each_item_the_tokens_and_audio_it_gets_alone() -> None:
    """Lengths that are not multiples of the hop, samples past them that are not zeros, and a
    text for one item only: encode and decode are per item, whatever the batch holds."""
    model = tiny()
    torch.manual_seed(0)
    for p in model.decoder.parameters():  # open the zero-initialised adaLN gates
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    audio = speech(3, 256 * 12)
    lengths = torch.tensor([256 * 12, 256 * 5 + 100, 256 * 9 - 17])
    tokens = model.encode(audio, lengths)  # item 1 and 2 carry speech past their lengths
    assert tokens.lengths.tolist() == [12, 6, 9]
    texts = [None, "hello", None]
    decoded = model.decode(tokens, text=texts, steps=3)
    assert decoded.shape == (3, 1, 256 * 12)
    for i, length in enumerate(lengths.tolist()):
        alone = model.encode(audio[i : i + 1, :, :length])
        k = alone.codes.shape[-1]
        assert torch.equal(tokens.codes[i, :, :k], alone.codes[0]), i
        audio_alone = model.decode(alone, text=texts[i : i + 1], steps=3)
        assert torch.allclose(decoded[i, :, : k * 256], audio_alone[0], atol=1e-5), i
        assert not decoded[i, :, k * 256 :].any()  # zeros past the item's tokens
    assert not torch.allclose(decoded[1, :, :1536], model.decode(tokens, steps=3)[1, :, :1536])


def test_decode_steps_seed_guidance_and_text() -> None:
    model = tiny()
    torch.manual_seed(0)
    for p in model.decoder.parameters():  # open the zero-initialised adaLN gates
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    tokens = model.encode(speech(2, 256 * 8))
    a = model.decode(tokens)
    assert a.shape == (2, 1, 256 * 8) and torch.isfinite(a).all()
    assert torch.equal(a, model.decode(tokens))
    assert not torch.equal(a, model.decode(tokens, seed=1))
    for steps in (4, 8):
        assert model.decode(tokens, steps=steps, scheduler="heun").shape == a.shape
    unguided = model.decode(tokens, guidance_scale=1.0)
    assert not torch.allclose(unguided, a)  # the default guidance is 1.5
    with_text = model.decode(tokens, text=["hello world", "a b c"])
    assert not torch.allclose(with_text, a)
    with pytest.raises(ValueError, match="expected 2 entries"):
        model.decode(tokens, text=["only one"])


def test_forward_trains_flow_and_vocoder_and_takes_text() -> None:
    model = anytok.create_model("tadicodec_24khz_6hz", tiny=True, seed=0).train()
    audio = speech(2, 256 * 6)
    out = model(audio, torch.tensor([256 * 6, 256 * 4]), text=["hi", None])
    assert out.reconstruction.shape == audio.shape
    assert set(out.losses) == {"diffusion", "quantizer"}
    (out.losses["diffusion"] + out.reconstruction.abs().mean()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vocoder.parameters())
    assert any(p.grad is not None for p in model.text_encoder.parameters())


def test_long_audio_helpers_explain_the_limit() -> None:
    with pytest.raises(ValueError, match="utterances one by one"):
        tiny().encode_long(speech(1, 4096))


def test_log_mel_matches_torchaudio_and_lines_up_with_tokens() -> None:
    config = MelConfig(sample_rate=16000, n_fft=256, hop_length=64, n_mels=16)
    audio = speech(1, 64 * 9 + 5)
    mel = LogMel(config)(audio)
    assert mel.shape == (1, 16, 10)  # ceil(581 / 64)
    reference = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=256, hop_length=64, n_mels=16, power=1.0, norm="slaney", mel_scale="slaney"
    )(torch.nn.functional.pad(audio[:, 0], (0, 64 * 10 - audio.shape[-1])))
    assert torch.allclose(mel, reference[..., :10].clamp_min(1e-5).log(), atol=1e-5)
    assert not any("mel" in k for k in LogMel(config).state_dict())  # derived, never saved


@pytest.mark.parametrize("frames", [1, 7, 32])
def test_vocoder_length_and_gradients(frames: int) -> None:
    config = MelConfig(sample_rate=16000, n_fft=256, hop_length=64, n_mels=16)
    vocoder = MelVocoder(config, dim=32, intermediate_dim=64, num_layers=1)
    mel = torch.randn(2, 16, frames, requires_grad=True)
    wave = vocoder(mel)
    assert wave.shape == (2, 1, frames * 64)
    wave.abs().mean().backward()
    assert mel.grad is not None and mel.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected \(batch, 16, frames\)"):
        vocoder(torch.randn(2, 8, 4))


@pytest.mark.parametrize("objective", ["epsilon", "v"])
def test_ddpm_objectives_decode_with_their_default_sampler(objective: str) -> None:
    """The decoder's objective may be epsilon / v; the default sampler stayed "euler", which
    samples only flow, so such a model built and trained, then failed its first decode."""
    decoder = {**get_arch("tadicodec_24khz_6hz").config(tiny=True)["decoder"]}
    model = anytok.create_model(
        "tadicodec_24khz_6hz", tiny=True, seed=0, decoder={**decoder, "objective": objective}
    ).eval()
    assert model.sample_scheduler == "ddim"
    audio = speech(1, 256 * 4)
    assert model.decode(model.encode(audio), steps=2).shape == audio.shape
    with pytest.raises(ValueError, match="sample_scheduler: scheduler 'euler' does not sample"):
        anytok.create_model(
            "tadicodec_24khz_6hz",
            tiny=True,
            decoder={**decoder, "objective": objective},
            sample_scheduler="euler",
        )
    assert tiny().sample_scheduler == "euler"  # flow keeps its sampler


def test_long_files_fall_back_to_one_pass_in_the_pipeline(tmp_path: Path) -> None:
    """A file longer than ``long_seconds`` failed in ``anytok encode`` / ``decode`` (the
    refusal was a bare ValueError, and the pipeline falls back to one pass only on
    ``UnsupportedModelError``); it is now encoded and decoded in one pass, as SNAC's."""
    from anytok.codecs.long_audio import UnsupportedModelError
    from anytok.media import save_audio
    from anytok.pipeline import decode_files, encode_files

    model = tiny()
    audio = speech(1, 256 * 12)[0]
    (tmp_path / "in").mkdir()
    save_audio(tmp_path / "in" / "a.wav", audio, model.sample_rate)
    long_seconds = audio.shape[-1] / model.sample_rate / 2  # the file counts as long
    with pytest.raises(UnsupportedModelError, match="utterances one by one"):
        model.encode_long(audio[None])
    with pytest.raises(UnsupportedModelError, match="whole utterances"):
        model.decode_long(model.encode(audio[None]))
    encoded = encode_files(model, [tmp_path / "in"], tmp_path / "tok", long_seconds=long_seconds)
    assert [f.error for f in encoded.failures] == [] and len(encoded.written) == 1
    tokens = anytok.Tokens.load(encoded.written[0])
    assert torch.equal(tokens.codes, model.encode(audio[None]).codes)
    decoded = decode_files(
        [tmp_path / "tok"], tmp_path / "out", lambda _: model, long_seconds=long_seconds
    )
    assert [f.error for f in decoded.failures] == [] and len(decoded.written) == 1


def tiny_teacher(path: Path) -> str:
    """A tiny random DINOv2-like teacher folder (no download), as REPA takes."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(path)
    return str(path)


def test_decoder_repa_is_refused(tmp_path: Path) -> None:
    """``decoder={"repa": ...}`` built a REPA projector that never ran (no teacher input):
    no gradients, and checkpoints that needed the teacher to load."""
    name = "tadicodec_24khz_6hz"
    decoder = get_arch(name).config(tiny=True)["decoder"]
    repa = {"teacher": tiny_teacher(tmp_path / "teacher"), "weight": 0.5, "layer": 0}
    with pytest.raises(ValueError, match="TaDiCodec: decoder.repa is not supported"):
        anytok.create_model(name, tiny=True, decoder={**decoder, "repa": repa})
    model = anytok.create_model(name, tiny=True, decoder={**decoder, "repa": None})
    assert model.decoder.repa is None
