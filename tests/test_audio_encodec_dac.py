"""EnCodec and DAC: parity with the reference packages (random weights, converted and loaded
strictly), bitrate choice, training behaviour, variable-length batches and long audio.

The references are the PyPI packages ``encodec`` (0.1.1) and ``descript-audio-codec``
(1.0.0); their tests are skipped when they are not installed.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import anytok
from anytok.codecs.audio.dac import DAC, convert_dac_state_dict
from anytok.codecs.audio.encodec import EnCodec, convert_encodec_state_dict
from anytok.codecs.long_audio import Context, receptive_field
from anytok.registry import get_arch

# The references build their convs with torch's deprecated (old-style) weight norm.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """One thread: these tensors are tiny, and threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- EnCodec parity


def _randomise_encodec_codebooks(ref) -> None:
    """EnCodec's codebooks start at zero (k-means on the first batch): draw each level's
    codes from a Gaussian fitted to that level's residuals of random audio, so every level's
    search matters (and distinct codes make float ties between two codes improbable)."""
    with torch.no_grad():
        residual = ref.encoder(0.3 * torch.randn(2, ref.channels, 64 * 320)).transpose(1, 2)
        residual = residual.reshape(-1, residual.shape[-1])
        for layer in ref.quantizer.vq.layers:
            book = layer._codebook
            noise = torch.randn_like(book.embed)
            book.embed.copy_(residual.mean(0) + residual.std(0) * noise)
            book.embed_avg.copy_(book.embed)
            book.cluster_size.uniform_(0.0, 4.0)
            book.inited.fill_(1.0)
            residual = residual - book.embed[book.quantize(residual)]


def _small_encodec_reference(causal: bool, norm: str, channels: int):
    encodec = pytest.importorskip("encodec")
    from encodec import modules as m
    from encodec import quantization as qt

    sizes = dict(channels=channels, dimension=8, n_filters=4, ratios=[4, 2], lstm=1)
    ref = encodec.EncodecModel(
        m.SEANetEncoder(norm=norm, causal=causal, **sizes),
        m.SEANetDecoder(norm=norm, causal=causal, **sizes),
        qt.ResidualVectorQuantizer(dimension=8, n_q=4, bins=16),
        target_bandwidths=[12.0, 24.0, 48.0],
        sample_rate=24000,
        channels=channels,
    )
    _randomise_encodec_codebooks(ref)
    ours = EnCodec(
        channels=channels,
        n_filters=4,
        ratios=[4, 2],
        dimension=8,
        lstm_layers=1,
        n_q=4,
        bins=16,
        causal=causal,
        norm=norm,
        target_bandwidths=[12.0, 24.0, 48.0],
    )
    ours.load_state_dict(convert_encodec_state_dict(ref.state_dict()), strict=True)
    return ref.eval(), ours.eval()


@pytest.mark.parametrize(
    ("causal", "norm", "channels"),
    [(True, "weight_norm", 1), (False, "time_group_norm", 2), (False, "weight_norm", 1)],
)
@pytest.mark.parametrize("samples", [160, 163, 5])
def test_encodec_matches_reference(causal: bool, norm: str, channels: int, samples: int) -> None:
    """The reference encodes the raw audio (its convolutions reflect-pad a ragged last
    window); so does anytok, at lengths that are, are not, and are shorter than a hop, and
    for each item of a batch with ``lengths``. Zero-padding to whole hops first changed the
    last codes (all codes of a 5-sample clip)."""
    ref, ours = _small_encodec_reference(causal, norm, channels)
    audio = 0.5 * torch.randn(2, channels, samples)
    padded = torch.nn.functional.pad(audio, (0, -samples % ours.hop_length))
    with torch.no_grad():
        assert max_diff(ours.encoder(padded), ref.encoder(padded)) <= TOL
        for bandwidth in (None, 24.0):  # every level / 2 levels
            ref.bandwidth = bandwidth
            ((ref_codes, scale),) = ref.encode(audio)
            assert scale is None
            tokens = ours.encode(audio, bandwidth=bandwidth)
            assert torch.equal(tokens.codes, ref_codes)
            assert tokens.spec.codebook_sizes == (16,) * ref_codes.shape[1]
            assert max_diff(ours.decode(tokens), ref.decode([(ref_codes, None)])) <= TOL
        # a batch of two lengths: the shorter item's codes are the reference's of its samples
        short = max(1, samples // 2 - 1)  # a ragged hop at 160 and 163 samples
        ref.bandwidth = None
        batch = ours.encode(audio, lengths=torch.tensor([samples, short]))
        ((ref_short, _),) = ref.encode(audio[1:, :, :short])
        frames = ref_short.shape[-1]
        assert int(batch.valid_lengths[1]) == frames
        assert torch.equal(batch.codes[1:, :, :frames], ref_short)


@pytest.mark.parametrize("name", ["encodec_24khz", "encodec_48khz"])
def test_encodec_full_config_matches_reference(name: str) -> None:
    encodec = pytest.importorskip("encodec")
    build = {
        "encodec_24khz": encodec.EncodecModel.encodec_model_24khz,
        "encodec_48khz": encodec.EncodecModel.encodec_model_48khz,
    }[name]
    ref = build(pretrained=False)
    ref.segment, ref.normalize = None, False  # one pass, no volume side channel (see docs)
    _randomise_encodec_codebooks(ref)
    ours = anytok.create_model(name).eval()
    ours.load_state_dict(convert_encodec_state_dict(ref.state_dict()), strict=True)
    assert ours.hop_length == math.prod(ref.encoder.ratios)
    assert ours.frame_rate == ref.frame_rate
    assert list(ours.target_bandwidths) == list(ref.target_bandwidths)
    audio = 0.3 * torch.randn(1, ours.channels, ours.hop_length * 12 - 77)  # a ragged hop
    ref.set_target_bandwidth(6.0)
    with torch.no_grad():
        ((ref_codes, _),) = ref.encode(audio)
        tokens = ours.encode(audio, bandwidth=6.0)
        assert tokens.codes.shape[1] == ref.quantizer.get_num_quantizers_for_bandwidth(
            ref.frame_rate, 6.0
        )
        assert torch.equal(tokens.codes, ref_codes)
        assert all(level.unique().numel() > 2 for level in ref_codes[0])  # searches matter
        assert max_diff(ours.decode(tokens), ref.decode([(ref_codes, None)])) <= TOL


# --------------------------------------------------------------------------- DAC parity


def _small_dac(rates: list[int]):
    dac = pytest.importorskip("dac")
    kwargs = dict(
        encoder_dim=4,
        encoder_rates=rates,
        decoder_dim=16,
        decoder_rates=rates[::-1],
        n_codebooks=3,
        codebook_size=16,
        codebook_dim=4,
        sample_rate=16000,
    )
    ref = dac.DAC(**kwargs).eval()
    ours = DAC(**kwargs).eval()
    ours.load_state_dict(convert_dac_state_dict(ref.state_dict()), strict=True)
    return ref, ours


def _check_dac_parity(ref, ours, audio: torch.Tensor, n_levels: int | None = None) -> None:
    with torch.no_grad():
        padded = ref.preprocess(audio, ref.sample_rate)
        ref_latent = ref.encoder(padded)
        assert max_diff(ours.encoder(padded), ref_latent) <= TOL
        ref_z, ref_codes, *_ = ref.quantizer(ref_latent, n_levels)
        tokens = ours.encode(audio, n_levels=n_levels)
        assert torch.equal(tokens.codes, ref_codes)
        assert max_diff(ours.latent_from_codes(tokens.codes), ref_z) <= TOL
        ref_audio = ref.decode(ref_z)
        ours_audio = ours.decode(tokens)
        assert ours_audio.shape[-1] == tokens.codes.shape[-1] * ours.hop_length
        assert max_diff(ours_audio[..., : ref_audio.shape[-1]], ref_audio) <= TOL
        assert not ours_audio[..., ref_audio.shape[-1] :].any()  # the zero tail of odd strides


@pytest.mark.parametrize("rates", [[2, 4], [2, 5], [3, 2, 5]], ids=str)
@pytest.mark.parametrize("samples", [400, 403, 7])
def test_dac_matches_reference(rates: list[int], samples: int) -> None:
    ref, ours = _small_dac(rates)
    _check_dac_parity(ref, ours, 0.5 * torch.randn(2, 1, samples))


def test_dac_fewer_levels_match_reference() -> None:
    ref, ours = _small_dac([2, 4])
    _check_dac_parity(ref, ours, 0.5 * torch.randn(1, 1, 320), n_levels=2)


def test_dac_44khz_full_config_matches_reference() -> None:
    dac = pytest.importorskip("dac")
    config = get_arch("dac_44khz").config()
    params = inspect.signature(dac.DAC).parameters
    ref = dac.DAC(**{k: v for k, v in config.items() if k in params}).eval()
    ours = anytok.create_model("dac_44khz").eval()
    ours.load_state_dict(convert_dac_state_dict(ref.state_dict()), strict=True)
    assert ours.hop_length == ref.hop_length and ours.latent_dim == ref.latent_dim == 1024
    _check_dac_parity(ref, ours, 0.3 * torch.randn(1, 1, 3 * ours.hop_length))


@pytest.mark.parametrize("name", ["dac_16khz", "dac_24khz"])
def test_dac_registered_sizes_load_reference_weights(name: str) -> None:
    """The registered sizes are the reference's: its state dict loads strictly."""
    dac = pytest.importorskip("dac")
    config = get_arch(name).config()
    params = inspect.signature(dac.DAC).parameters
    ref = dac.DAC(**{k: v for k, v in config.items() if k in params})
    ours = anytok.create_model(name)
    ours.load_state_dict(convert_dac_state_dict(ref.state_dict()), strict=True)
    assert ours.spec.frame_rate == config["sample_rate"] / ref.hop_length


def test_registered_sizes_are_the_published_ones() -> None:
    published = {  # (sample rate, hop, levels, frame rate) of the anchors' released models
        "encodec_24khz": (24000, 320, 32, 75.0),
        "encodec_48khz": (48000, 320, 16, 150.0),
        "dac_16khz": (16000, 320, 12, 50.0),
        "dac_24khz": (24000, 320, 32, 75.0),
        "dac_44khz": (44100, 512, 9, 44100 / 512),
    }
    for name, (rate, hop, levels, frame_rate) in published.items():
        builder, config = get_arch(name).builder, get_arch(name).config()
        signature = inspect.signature(builder).parameters
        assert set(config) <= set(signature), name
        spec_levels = config.get("n_q", config.get("n_codebooks"))
        assert (config["sample_rate"], spec_levels) == (rate, levels), name
        ratios = config.get("ratios", config.get("encoder_rates"))
        assert math.prod(ratios) == hop and rate / hop == frame_rate, name
        assert config.get("bins", config.get("codebook_size")) == 1024


# --------------------------------------------------------------------------- bitrate


def test_encodec_bandwidth_and_levels() -> None:
    model = anytok.create_model("encodec_24khz", tiny=True).eval()
    audio = 0.5 * torch.randn(1, 1, model.hop_length * 10)
    full = model.encode(audio)
    assert full.spec.codebook_sizes == (16,) * 4
    assert model.kbps_per_level == 12.0  # 3 kHz frames x 4 bits in the tiny configuration
    for bandwidth, levels in [(12.0, 1), (24.0, 2), (47.9, 3), (48.0, 4)]:
        tokens = model.encode(audio, bandwidth=bandwidth)
        assert tokens.codes.shape[1] == tokens.spec.num_levels == levels
        assert torch.equal(tokens.codes, full.codes[:, :levels])  # residual levels nest
        assert model.decode(tokens).shape == audio.shape
    assert torch.equal(model.encode(audio, n_levels=2).codes, full.codes[:, :2])
    with pytest.raises(ValueError, match="bandwidth 60"):
        model.encode(audio, bandwidth=60.0)
    with pytest.raises(ValueError, match="not both"):
        model.encode(audio, n_levels=1, bandwidth=12.0)
    full_size = anytok.create_model("encodec_24khz")
    assert [full_size.levels_for_bandwidth(b) for b in (1.5, 3, 6, 12, 24)] == [2, 4, 8, 16, 32]


def test_encodec_default_bandwidth_is_configurable() -> None:
    model = anytok.create_model("encodec_24khz", tiny=True, bandwidth=24.0).eval()
    audio = 0.5 * torch.randn(1, 1, model.hop_length * 4)
    assert model.encode(audio).codes.shape[1] == 2
    assert model(audio).tokens.codes.shape[1] == 2


def test_dac_levels() -> None:
    model = anytok.create_model("dac_44khz", tiny=True).eval()
    audio = 0.5 * torch.randn(1, 1, model.hop_length * 6)
    full = model.encode(audio)
    two = model.encode(audio, n_levels=2)
    assert two.spec.codebook_sizes == (16, 16) and torch.equal(two.codes, full.codes[:, :2])
    assert model.decode(two).shape == audio.shape
    with pytest.raises(ValueError, match="n_levels"):
        model.encode(audio, n_levels=4)


def test_training_draws_bitrates() -> None:
    encodec = anytok.create_model("encodec_24khz", tiny=True).train()
    dac = anytok.create_model("dac_44khz", tiny=True, quantizer_dropout=1.0).train()
    audio = 0.5 * torch.randn(2, 1, 64)
    seen_encodec = {encodec(audio).tokens.codes.shape[1] for _ in range(12)}
    assert seen_encodec <= set(encodec._target_levels) and len(seen_encodec) > 1
    seen_dac = {dac(audio).tokens.codes.shape[1] for _ in range(12)}
    assert seen_dac <= {1, 2, 3} and len(seen_dac) > 1
    dac.quantizer_dropout = 0.0
    assert dac(audio).tokens.codes.shape[1] == 3


# --------------------------------------------------------------------------- batches, long audio


@pytest.mark.parametrize("name", ["dac_16khz", "encodec_48khz"])
def test_non_causal_batch_equals_items_alone(name: str) -> None:
    model = anytok.create_model(name, tiny=True).eval()
    hop, c = model.hop_length, model.channels
    lengths = torch.tensor([hop * 9 + 3, hop * 5, hop * 9 + 3 - 7, 2])
    audio = 0.5 * torch.randn(4, c, int(lengths.max()))
    with torch.inference_mode():
        batch = model.encode(audio, lengths)
        decoded = model.decode(batch)
        for i, n in enumerate(lengths.tolist()):
            alone = model.encode(audio[i : i + 1, :, :n])
            frames = alone.codes.shape[-1]
            assert torch.equal(batch.codes[i, :, :frames], alone.codes[0])
            own = model.decode(alone)[0]
            assert max_diff(decoded[i, :, : frames * hop], own) <= TOL
            assert not decoded[i, :, frames * hop :].any()


def test_dac_receptive_field_is_measured() -> None:
    model = anytok.create_model("dac_44khz", tiny=True).eval()
    context = receptive_field(model)
    assert context["encoder"].bounded and context["decoder"].bounded
    assert context["encoder"].left == context["encoder"].right > 0  # centred convs
    assert receptive_field(model) is context  # measured once


def test_dac_encode_long_equals_one_pass() -> None:
    model = anytok.create_model("dac_24khz", tiny=True).eval()
    hop = model.hop_length
    audio = 0.5 * torch.randn(2, 1, hop * 61 + 9)
    with torch.inference_mode():
        one = model.encode(audio)
        chunk = 7 * hop / model.sample_rate  # 7 frames per step, context measured
        long = model.encode_long(audio, chunk_seconds=chunk)
        assert long.spec == one.spec and torch.equal(long.codes, one.codes)
        few = model.encode_long(audio, chunk_seconds=chunk, n_levels=2)
        assert torch.equal(few.codes, one.codes[:, :2])
        assert max_diff(model.decode_long(one, chunk_seconds=chunk), model.decode(one)) <= TOL
        lengths = torch.tensor([audio.shape[-1], hop * 20])
        by_item = model.encode_long(audio, chunk_seconds=chunk, lengths=lengths)
        assert by_item.lengths.tolist() == [62, 20]
        assert torch.equal(
            by_item.codes[1, :, :20], model.encode(audio[1:, :, : hop * 20]).codes[0]
        )
        # With lengths, decode_long decodes each length on its valid frames, as decode does:
        # the codes past item 1's end used to reach its last samples (0.14 off here).
        assert (
            max_diff(model.decode_long(by_item, chunk_seconds=chunk), model.decode(by_item)) <= TOL
        )
        # An empty item (an LM that stopped at once) keeps no frame and decodes to silence.
        empty = model.encode_long(audio, chunk_seconds=chunk, lengths=torch.tensor([hop * 3, 0]))
        assert empty.lengths.tolist() == [3, 0] and empty.codes.shape[-1] == 62
        assert torch.equal(empty.codes[0, :, :3], model.encode(audio[:1, :, : hop * 3]).codes[0])
        silent = model.decode_long(empty, chunk_seconds=chunk)
        assert not silent[1].any() and not silent[0, :, hop * 3 :].any()


def test_unbounded_receptive_field_falls_back_to_context() -> None:
    model = anytok.create_model("encodec_48khz", tiny=True).eval()  # GroupNorm over time
    assert receptive_field(model)["encoder"] == Context(None, None)
    audio = 0.5 * torch.randn(1, 2, model.hop_length * 40)
    with torch.inference_mode():
        tokens = model.encode_long(
            audio, chunk_seconds=10 / model.frame_rate, context_seconds=0.001
        )
    assert tokens.codes.shape == model.encode(audio).codes.shape


# --------------------------------------------------------------------------- transformers


def _randomise_hf_encodec_codebooks(ref, channels: int, hop: int) -> None:
    """As :func:`_randomise_encodec_codebooks`, for transformers' EncodecModel."""
    with torch.no_grad():
        residual = ref.encoder(0.3 * torch.randn(2, channels, 64 * hop)).transpose(1, 2)
        residual = residual.reshape(-1, residual.shape[-1])
        for layer in ref.quantizer.layers:
            book = layer.codebook
            book.embed.copy_(residual.mean(0) + residual.std(0) * torch.randn_like(book.embed))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.uniform_(0.0, 4.0)
            book.inited.fill_(1.0)
            residual = residual - book.embed[torch.cdist(residual, book.embed).argmin(-1)]


@pytest.mark.parametrize("name", ["encodec_24khz", "encodec_48khz"])
def test_encodec_matches_transformers(name: str) -> None:
    """transformers' EncodecModel (the layout of facebook/encodec_24khz and _48khz) at the
    registered sizes: converted and loaded strictly, same codes and audio at 6 kbps."""
    transformers = pytest.importorskip("transformers")
    configs = {
        "encodec_24khz": {},
        "encodec_48khz": dict(
            sampling_rate=48000,
            audio_channels=2,
            norm_type="time_group_norm",
            use_causal_conv=False,
            target_bandwidths=[3.0, 6.0, 12.0, 24.0],
        ),
    }
    # one pass without the volume side channel, as anytok encodes (see docs/audio.md)
    config = transformers.EncodecConfig(
        **configs[name], chunk_length_s=None, overlap=None, normalize=False
    )
    ref = transformers.EncodecModel(config).eval()
    ours = anytok.create_model(name).eval()
    _randomise_hf_encodec_codebooks(ref, ours.channels, ours.hop_length)
    ours.load_state_dict(convert_encodec_state_dict(ref.state_dict()), strict=True)
    audio = 0.3 * torch.randn(2, ours.channels, ours.hop_length * 10)
    with torch.no_grad():
        encoded = ref.encode(audio, bandwidth=6.0)
        codes = encoded.audio_codes[0]
        tokens = ours.encode(audio, bandwidth=6.0)
        assert torch.equal(tokens.codes, codes)
        assert codes[:, 0].unique().numel() > 10
        decoded = ref.decode(encoded.audio_codes, encoded.audio_scales).audio_values
        assert max_diff(ours.decode(tokens), decoded) <= TOL


def test_transformers_seanet_keys_reject_unknown_entries() -> None:
    from anytok.nn.encodec_seanet import convert_transformers_seanet_keys

    state = {
        "encoder.layers.0.conv.weight": torch.zeros(1),
        "encoder.layers.3.extra": torch.zeros(1),
    }
    with pytest.raises(KeyError, match="encoder.layers.3.extra"):
        convert_transformers_seanet_keys(state, "encoder.layers.", "encoder.model.", decoder=False)


@pytest.mark.parametrize("name", ["dac_16khz", "dac_24khz", "dac_44khz"])
def test_dac_matches_transformers(name: str) -> None:
    """transformers' DacModel (the layout of descript/dac_16khz, _24khz, _44khz: plain conv
    weights) at the registered sizes: converted and loaded strictly, same codes and audio."""
    transformers = pytest.importorskip("transformers")
    arch = get_arch(name).default_config
    config = transformers.DacConfig(
        sampling_rate=arch["sample_rate"],
        downsampling_ratios=arch["encoder_rates"],
        upsampling_ratios=arch["decoder_rates"],
        hop_length=math.prod(arch["encoder_rates"]),
        n_codebooks=arch["n_codebooks"],
    )
    ref = transformers.DacModel(config).eval()
    ours = anytok.create_model(name).eval()
    ours.load_state_dict(convert_dac_state_dict(ref.state_dict()), strict=True)
    audio = 0.3 * torch.randn(2, 1, ours.hop_length * 8)
    with torch.no_grad():
        codes = ref.encode(audio).audio_codes
        tokens = ours.encode(audio)
        assert torch.equal(tokens.codes, codes)
        assert codes[:, 0].unique().numel() > 4
        decoded = ref.decode(audio_codes=codes).audio_values
        ours_audio = ours.decode(tokens)[:, 0, : decoded.shape[-1]]
        assert max_diff(ours_audio, decoded.reshape(ours_audio.shape)) <= TOL


def test_facebook_tag_imports_the_hub_file(tmp_path, monkeypatch) -> None:
    """``anytok.load("encodec_24khz.facebook")`` converts the transformers-format file found in
    the Hugging Face cache; a snapshot without model.safetensors is refused by name."""
    transformers = pytest.importorskip("transformers")
    from hub_cache import put_in_hub_cache

    from anytok.registry import WeightsNotFoundError

    ref = transformers.EncodecModel(transformers.EncodecConfig()).eval()
    _randomise_hf_encodec_codebooks(ref, 1, 320)
    put_in_hub_cache(tmp_path, "facebook/encodec_24khz", ref.state_dict(), monkeypatch)
    loaded = anytok.load("encodec_24khz.facebook")
    assert loaded.registry_name == "encodec_24khz.facebook"
    audio = 0.3 * torch.randn(1, 1, 320 * 9)
    with torch.no_grad():
        expected = ref.encode(audio, bandwidth=6.0).audio_codes[0]
        assert torch.equal(loaded.encode(audio, bandwidth=6.0).codes, expected)
    snapshot = next((tmp_path / "hub").rglob("model.safetensors"))
    snapshot.unlink()
    with pytest.raises(WeightsNotFoundError, match="has no model.safetensors"):
        anytok.load("encodec_24khz.facebook")


@pytest.mark.parametrize("name", ["encodec_24khz", "dac_16khz", "mimi"])
def test_residual_codecs_share_the_bitrate_contract(name):
    """EnCodec, DAC and Mimi (``ResidualAudioTokenizer``): ``n_levels=k`` gives the first k
    levels of the full encoding and a spec of k levels; bad k is refused by name."""
    model = anytok.create_model(name, tiny=True).eval()
    n_q = model.quantizer.num_quantizers
    audio = 0.3 * torch.randn(2, model.channels, 3 * model.hop_length + 5)
    lengths = torch.tensor([audio.shape[-1], 2 * model.hop_length])
    full = model.encode(audio, lengths, n_levels=n_q)
    two = model.encode(audio, lengths, n_levels=2)
    assert two.spec.num_levels == 2 and two.codes.shape[1] == 2
    assert torch.equal(two.codes, full.codes[:, :2])
    assert torch.equal(two.lengths, torch.tensor([4, 2]))
    default = model.encode(audio)
    assert default.spec.num_levels == model.default_levels
    decoded = model.decode(two)
    assert decoded.shape == (2, model.channels, 4 * model.hop_length)
    assert decoded[1, :, 2 * model.hop_length :].abs().max() == 0  # zeros past item 1
    for bad in (0, n_q + 1):
        with pytest.raises(
            ValueError,
            match=rf"{type(model).__name__}\.encode: n_levels must be in \[1, {n_q}\], got {bad}",
        ):
            model.encode(audio, n_levels=bad)


def test_dac_converter_takes_the_whole_weights_file_and_names_strays() -> None:
    """``torch.load("weights.pth")`` of the official package gives ``{"state_dict",
    "metadata"}``: converted as its state dict (it passed both keys through and the load
    failed with hundreds of missing keys); keys that are not DAC weights are named."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DacConfig(
        encoder_hidden_size=4,
        downsampling_ratios=[2, 2],
        decoder_hidden_size=16,
        upsampling_ratios=[2, 2],
        hop_length=4,
        n_codebooks=2,
        codebook_size=16,
        codebook_dim=4,
        hidden_size=32,
    )
    state = transformers.DacModel(config).state_dict()
    plain = convert_dac_state_dict(state)
    wrapped = convert_dac_state_dict({"state_dict": state, "metadata": {"kwargs": {}}})
    assert wrapped.keys() == plain.keys()
    assert all(torch.equal(wrapped[k], plain[k]) for k in plain)
    with pytest.raises(KeyError, match="optimizer"):
        convert_dac_state_dict({**state, "optimizer": torch.zeros(1)})
