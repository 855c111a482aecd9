"""Scalar and lookup-free quantizers: FSQ, ResidualFSQ, LFQ, BSQ, GroupLFQ, BinaryQuantizer,
DimensionWiseQuantizer.

Parity is checked against vector-quantize-pytorch (the reference implementation): same codes,
same quantized values, same entropy loss where the definitions coincide (our LFQ entropy is
factorized over groups of bits; with one group holding all bits it is vqp's exact loss).
"""

from __future__ import annotations

import math
import resource

import pytest
import torch
import vector_quantize_pytorch as vqp
from torch import nn

from anytok.quantizers import (
    BSQ,
    FSQ,
    LFQ,
    BinaryQuantizer,
    DimensionWiseQuantizer,
    GroupLFQ,
    Quantizer,
    ResidualFSQ,
    build,
    list_quantizers,
)
from anytok.quantizers.lfq import bit_patterns, factorized_entropies

#: one small configuration per registered name of this family
CONFIGS: dict[str, dict] = {
    "fsq": {"levels": [8, 5, 5, 5], "dim": 12},
    "rfsq": {"levels": [8, 5, 5, 5], "num_quantizers": 3, "dim": 12},
    "residual_fsq": {"levels": [5, 5, 5], "num_quantizers": 2},
    "lfq": {"dim": 12, "codebook_size": 2**10},
    "bsq": {"dim": 12, "codebook_dim": 10},
    "group_lfq": {"dim": 12, "codebook_dim": 12, "num_groups": 3},
    "gfq": {"dim": 8, "codebook_dim": 8, "num_groups": 2},
    "binary": {"dim": 12, "bits": 32, "bits_per_code": 8},
    "dimwise": {"dim": 12, "num_bins": 16},
    "dimension_wise": {"dim": 12, "num_bins": 8, "binning": "uniform"},
}


def make(name: str) -> Quantizer:
    torch.manual_seed(0)
    quantizer = build(name, **CONFIGS[name])
    assert isinstance(quantizer, Quantizer)
    return quantizer


@pytest.fixture
def one_thread():
    """Tiny training loops run faster on one thread than on two that synchronise every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mixture_of_gaussians(n: int, dim: int = 16, clusters: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(clusters, dim, generator=generator)
    assignment = torch.randint(clusters, (n,), generator=generator)
    return centers[assignment] + 0.3 * torch.randn(n, dim, generator=generator)


# --------------------------------------------------------------------------- contract


def test_every_name_is_registered():
    assert set(CONFIGS) <= set(list_quantizers())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_contract_shapes_range_and_round_trip(name):
    quantizer = make(name).eval()
    z = torch.randn(2, 3, 5, quantizer.dim)
    out = quantizer(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.codes.shape == (2, 3, 5, quantizer.num_levels)
    assert out.codes.dtype == torch.int64
    assert out.loss.shape == () and float(out.loss) == 0.0  # eval: no auxiliary loss
    sizes = torch.tensor(quantizer.codebook_sizes)
    assert bool((out.codes >= 0).all()) and bool((out.codes < sizes).all())
    assert all(metric.ndim == 0 and not metric.requires_grad for metric in out.metrics.values())
    codes = quantizer.encode(z)
    assert torch.equal(codes, out.codes)
    assert torch.equal(quantizer.decode(codes), out.quantized)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_straight_through_gradient(name):
    quantizer = make(name).train()
    z = torch.randn(4, 32, quantizer.dim, requires_grad=True)
    out = quantizer(z)
    assert out.quantized.requires_grad
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)
    assert "perplexity/0" in out.metrics or "perplexity/mean" in out.metrics


def test_training_losses_are_differentiable_for_sign_quantizers():
    for quantizer in (LFQ(dim=8, codebook_size=2**6), BSQ(dim=8, codebook_dim=6)):
        z = torch.randn(64, 8, requires_grad=True)
        out = quantizer.train()(z)
        assert float(out.loss.detach()) != 0.0
        out.loss.backward()
        assert bool(z.grad.abs().sum() > 0)
        assert {"entropy/per_sample", "entropy/codebook", "commitment"} <= set(out.metrics)


def test_quantization_is_fp32_under_autocast():
    z = torch.randn(4, 16, 6)
    for quantizer in (FSQ([8, 5, 5, 5, 5, 5]), LFQ(codebook_size=2**6)):
        quantizer.eval()
        reference = quantizer(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = quantizer(z)
        assert torch.equal(out.codes, reference.codes)
        assert out.quantized.dtype == z.dtype


# --------------------------------------------------------------------------- errors


def test_clear_errors():
    with pytest.raises(ValueError, match="levels"):
        FSQ([])
    with pytest.raises(ValueError, match="preserve_symmetry"):
        FSQ([2, 5])
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([1, 5], preserve_symmetry=True)
    with pytest.raises(ValueError, match="integers"):
        FSQ([8.0, 5])
    with pytest.raises(ValueError, match="power of 2"):
        LFQ(codebook_size=1000)
    with pytest.raises(ValueError, match="num_codebooks"):
        LFQ(codebook_size=2**64)
    with pytest.raises(ValueError, match="divide"):
        GroupLFQ(dim=8, codebook_dim=10, num_groups=3)
    with pytest.raises(ValueError, match="entropy_group_size"):
        LFQ(codebook_size=2**32, entropy_group_size=None)
    with pytest.raises(ValueError, match="divide"):
        BinaryQuantizer(dim=8, bits=128, bits_per_code=12)
    with pytest.raises(ValueError, match="binning"):
        DimensionWiseQuantizer(4, binning="lloyd")
    with pytest.raises(ValueError, match="n_levels"):
        ResidualFSQ([5, 5], 2).encode(torch.randn(3, 2), n_levels=3)
    for name in CONFIGS:
        quantizer = make(name).eval()
        with pytest.raises(ValueError, match=r"expected channel-last input \(\.\.\., "):
            quantizer(torch.randn(3, quantizer.dim + 1))
        codes = quantizer.encode(torch.randn(3, quantizer.dim))
        with pytest.raises(TypeError, match="integer"):
            quantizer.decode(codes.float())
        with pytest.raises(ValueError, match="out of range|below -1"):
            quantizer.decode(torch.full_like(codes, quantizer.codebook_sizes[0]))
        with pytest.raises(ValueError, match="out of range|below -1"):
            quantizer.decode(torch.full_like(codes, -2))
        with pytest.raises(ValueError, match="expected codes"):
            quantizer.decode(torch.cat([codes, codes], dim=-1))


# --------------------------------------------------------------------------- parity: FSQ


@pytest.mark.parametrize(
    ("levels", "kwargs"),
    [
        ([8, 5, 5, 5], {}),
        ([8, 8, 8, 5, 5, 5], {}),
        ([7, 6, 5], {"dim": 16}),
        ([8, 5, 5, 5], {"dim": 32, "num_codebooks": 2}),
        ([2, 4, 5], {"preserve_symmetry": True}),
    ],
)
def test_fsq_matches_vector_quantize_pytorch(levels, kwargs):
    torch.manual_seed(0)
    reference = vqp.FSQ(levels=levels, **kwargs).eval()
    ours = FSQ(levels, **kwargs).eval()
    ours.load_state_dict(reference.state_dict())  # projections, when there are any
    z = 2 * torch.randn(4, 200, ours.dim)
    expected, indices = reference(z)
    out = ours(z)
    indices = indices.long().reshape(out.codes.shape)
    assert torch.equal(out.codes, indices)
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
    reference_indices = indices.squeeze(-1) if ours.num_codebooks == 1 else indices
    torch.testing.assert_close(ours.decode(indices), reference.indices_to_codes(reference_indices))


def test_fsq_values_are_the_paper_grid():
    quantizer = FSQ([8, 5]).eval()
    codes = torch.arange(40).unsqueeze(-1)
    values = quantizer.decode(codes)
    assert torch.equal(values[:, 1].unique(), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(values[:, 0].unique(), torch.arange(-4, 4) / 4)  # even level: offset grid


@pytest.mark.parametrize("dim", [None, 16])
def test_residual_fsq_matches_vector_quantize_pytorch(dim):
    torch.manual_seed(0)
    reference = vqp.ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=4, dim=dim).eval()
    ours = ResidualFSQ([8, 5, 5, 5], 4, dim=dim).eval()
    ours.load_state_dict(reference.state_dict())
    z = torch.randn(3, 100, ours.dim)
    expected, indices = reference(z)
    out = ours(z)
    assert torch.equal(out.codes, indices.long())
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.decode(out.codes), reference.get_output_from_indices(indices))


def test_residual_fsq_prefix_and_quantize_dropout():
    torch.manual_seed(0)
    quantizer = ResidualFSQ([5, 5, 5], 4, quantize_dropout=True).eval()
    z = torch.randn(64, 3)
    target = torch.tanh(z / quantizer.soft_clamp) * quantizer.soft_clamp  # what the stages see
    full = quantizer.encode(z)
    errors = []
    for k in range(1, 5):
        prefix = quantizer.encode(z, n_levels=k)
        assert torch.equal(prefix, full[..., :k])
        padded = torch.cat([prefix, prefix.new_full((64, 4 - k), -1)], dim=-1)
        assert torch.equal(quantizer.decode(prefix), quantizer.decode(padded))
        errors.append(float((quantizer.decode(prefix) - target).abs().mean()))
    assert errors == sorted(errors, reverse=True)  # every stage refines the previous
    quantizer.train()
    seen = set()
    for _ in range(30):
        codes = quantizer(z).codes
        kept = int((codes[0] >= 0).sum())
        assert bool((codes[..., :kept] >= 0).all()) and bool((codes[..., kept:] == -1).all())
        seen.add(kept)
    assert len(seen) > 1


# --------------------------------------------------------------------------- parity: LFQ / BSQ


@pytest.mark.parametrize(
    "kwargs",
    [
        {"codebook_size": 2**8},
        {"codebook_size": 2**5, "num_codebooks": 2},
        {"codebook_size": 2**6, "dim": 20},
    ],
)
def test_lfq_matches_vector_quantize_pytorch(kwargs):
    torch.manual_seed(0)
    reference = vqp.LFQ(**kwargs, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    ours = LFQ(
        **kwargs, entropy_loss_weight=0.1, commitment_loss_weight=0.25, entropy_group_size=None
    )
    ours.load_state_dict(
        reference.state_dict(), strict=False
    )  # vqp keeps its bit mask in the state dict
    z = torch.randn(4, 64, ours.dim)
    for training in (True, False):
        reference.train(training)
        ours.train(training)
        expected, indices, aux_loss = reference(z)
        out = ours(z)
        assert torch.equal(out.codes, indices.long().reshape(out.codes.shape))
        torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
        # exact entropy (one group per codebook) is vqp's loss
        torch.testing.assert_close(out.loss, aux_loss, rtol=1e-5, atol=1e-6)


def test_lfq_without_codebook_size_has_2_to_the_dim_codes_per_codebook_as_vqp():
    """``LFQ(dim=8, num_codebooks=2)``: 2**dim codes per codebook (the docstring, and
    vector-quantize-pytorch: the input is projected 8 -> 16), not dim / num_codebooks bits."""
    torch.manual_seed(0)
    reference = vqp.LFQ(dim=8, num_codebooks=2, commitment_loss_weight=0.25)
    ours = LFQ(dim=8, num_codebooks=2, entropy_group_size=None)  # same loss weights
    assert ours.codebook_sizes == (reference.codebook_size,) * 2 == (256, 256)
    assert ours.codebook_dim == reference.codebook_dim == 8
    assert ours.has_projections and reference.has_projections
    assert ours.project_in.weight.shape == reference.project_in.weight.shape == (16, 8)
    ours.load_state_dict(reference.state_dict(), strict=False)
    z = torch.randn(4, 64, 8)
    for training in (True, False):
        reference.train(training)
        ours.train(training)
        expected, indices, aux_loss = reference(z)
        out = ours(z)
        assert torch.equal(out.codes, indices.long())
        torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.loss, aux_loss, rtol=1e-5, atol=1e-6)
    assert int(out.codes.max()) >= 16  # codes beyond the old 16 per codebook do occur


def test_bsq_matches_spherical_lfq_of_vector_quantize_pytorch():
    torch.manual_seed(0)
    reference = vqp.LFQ(codebook_size=2**6, spherical=True, commitment_loss_weight=0.25)
    ours = BSQ(dim=6, codebook_dim=6, entropy_group_size=None)
    z = torch.randn(4, 64, 6)
    for training in (True, False):
        reference.train(training)
        ours.train(training)
        expected, indices, aux_loss = reference(z)
        out = ours(z)
        assert torch.equal(out.codes[..., 0], indices.long())
        torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.loss, aux_loss, rtol=1e-5, atol=1e-6)
    values = ours.eval().decode(torch.arange(64).unsqueeze(-1))
    torch.testing.assert_close(values.norm(dim=-1), torch.ones(64))  # codes on the unit sphere


def test_lfq_bit_order_is_most_significant_first():
    quantizer = LFQ(codebook_size=2**4).eval()
    z = torch.tensor([[1.0, -1.0, -1.0, 1.0]])  # bits 1001
    assert int(quantizer.encode(z)) == 0b1001
    torch.testing.assert_close(quantizer.decode(torch.tensor([[0b0110]])), -z)


def test_factorized_entropy_bounds_the_exact_one():
    """Grouping keeps the per-sample entropy exact and over-estimates the codebook entropy."""
    torch.manual_seed(0)
    logits = 3 * torch.randn(256, 2, 8) + 1
    exact_sample, exact_codebook = factorized_entropies(logits, bit_patterns(8))
    for group_size in (1, 3, 4):
        sample, codebook = factorized_entropies(logits, bit_patterns(group_size))
        torch.testing.assert_close(sample, exact_sample, rtol=1e-4, atol=1e-4)
        assert float(codebook) >= float(exact_codebook) - 1e-4


# --------------------------------------------------------------------------- scale


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def test_lfq_with_2_pow_18_codes_trains():
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(32, 18), nn.Linear(18, 32)
    quantizer = LFQ(codebook_size=2**18).train()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-2)
    data = torch.randn(2048, 32)
    before = _max_rss_bytes()
    losses = []
    for _ in range(5):
        out = quantizer(encoder(data))
        loss = (decoder(out.quantized) - data).square().mean() + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert float(out.metrics["usage/0"]) > 0.9  # 2048 vectors over 2^18 codes: nearly all distinct
    # a 2048 x 2^18 soft-assignment matrix alone would be 2 GiB
    assert _max_rss_bytes() - before < 1 << 30


def test_lfq_with_2_pow_32_codes_runs():
    torch.manual_seed(0)
    quantizer = LFQ(dim=64, codebook_size=2**32)
    z = torch.randn(8, 512, 64, requires_grad=True)  # an N x 2^32 matrix would be 64 TiB
    before = _max_rss_bytes()
    out = quantizer.train()(z)
    out.loss.backward()
    assert out.codes.shape == (8, 512, 1) and int(out.codes.max()) < 2**32
    assert int(out.codes.max()) >= 2**31  # the top bit is used
    assert float(out.metrics["usage/0"]) == 1.0
    quantizer.eval()
    with torch.no_grad():
        codes = quantizer.encode(z)
        assert torch.equal(quantizer.decode(codes), quantizer(z).quantized)
    assert _max_rss_bytes() - before < 1 << 30


def test_binary_quantizer_with_2_pow_128_codes():
    quantizer = BinaryQuantizer(dim=256, bits=128, bits_per_code=16)
    assert quantizer.codebook_sizes == (2**16,) * 8
    assert quantizer.bits_per_vector == 128
    z = torch.randn(2, 256, 256, requires_grad=True)
    out = quantizer.train()(z)
    out.loss.backward()
    assert out.codes.shape == (2, 256, 8)
    assert int(out.codes.max()) < 2**16 and int(out.codes.max()) >= 2**15
    # the 128 bits read back from the 8 codes are the signs of the projected vector
    bits = quantizer.codes_to_bits(out.codes).reshape(2, 256, 128)
    assert torch.equal(bits, quantizer.project_in(z) > 0)
    quantizer.eval()
    with torch.no_grad():
        assert torch.equal(quantizer.decode(quantizer.encode(z)), quantizer(z).quantized)


# --------------------------------------------------------------------------- training sanity


@pytest.mark.parametrize("name", ["fsq", "rfsq", "lfq", "bsq", "group_lfq", "binary", "dimwise"])
def test_reconstruction_error_falls_on_a_mixture_of_gaussians(name, one_thread):
    quantizer = make(name)
    data = mixture_of_gaussians(2048)
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(16, quantizer.dim), nn.Linear(quantizer.dim, 16)
    if isinstance(quantizer, DimensionWiseQuantizer):
        with torch.no_grad():
            quantizer.calibrate(encoder(data))
    parameters = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)

    def reconstruction_error() -> float:
        quantizer.eval()
        with torch.no_grad():
            error = (decoder(quantizer(encoder(data)).quantized) - data).square().mean()
        quantizer.train()
        return float(error)

    before = reconstruction_error()
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        batch = data[torch.randint(len(data), (256,), generator=generator)]
        out = quantizer(encoder(batch))
        loss = (decoder(out.quantized) - batch).square().mean() + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert reconstruction_error() < 0.6 * before


def test_lfq_entropy_loss_spreads_usage_over_a_small_codebook(one_thread):
    """Off-centre data: without the entropy loss a few codes take everything."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(256, 16, generator=generator)
    data = centers[torch.randint(256, (4096,), generator=generator)] + 2.0
    data = data + 0.1 * torch.randn(4096, 16, generator=generator)

    def usage_after_training(entropy_loss_weight: float) -> float:
        torch.manual_seed(0)
        # a softer assignment than the default inv_temperature=100 keeps the entropy gradient
        # alive for samples far from a bit's decision boundary, so 150 steps suffice
        quantizer = LFQ(
            codebook_size=2**6, entropy_loss_weight=entropy_loss_weight, inv_temperature=10.0
        )
        encoder = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 6))
        decoder = nn.Sequential(nn.Linear(6, 64), nn.GELU(), nn.Linear(64, 16))
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
        batches = torch.Generator().manual_seed(1)
        for _ in range(150):
            batch = data[torch.randint(len(data), (512,), generator=batches)]
            out = quantizer(encoder(batch))
            loss = (decoder(out.quantized) - batch).square().mean() + out.loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            codes = quantizer.eval().encode(encoder(data))
        return codes.unique().numel() / 2**6

    assert usage_after_training(1.0) >= 0.95
    assert usage_after_training(0.0) < 0.5


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize(
    "quantizer",
    [
        FSQ([8, 5, 5, 5], dim=8),
        FSQ([5, 5], num_codebooks=2),
        LFQ(dim=8, codebook_size=2**6),
        BSQ(dim=8, codebook_dim=6),
    ],
    ids=["fsq-projected", "fsq-codebooks", "lfq", "bsq"],
)
def test_eval_forward_compiles_to_one_graph(quantizer):
    # fullgraph=True fails on any graph break; aot_eager keeps the test fast (inductor on this
    # CPU adds ~30 s of C++ compilation and gives the same graph)
    torch._dynamo.reset()
    quantizer.eval()
    compiled = torch.compile(quantizer, fullgraph=True, backend="aot_eager")
    z = torch.randn(2, 10, quantizer.dim)
    out, expected = compiled(z), quantizer(z)
    assert torch.equal(out.codes, expected.codes)
    torch.testing.assert_close(out.quantized, expected.quantized)


# --------------------------------------------------------------------------- dimension-wise


@pytest.mark.parametrize("binning", ["gaussian", "uniform"])
def test_dimwise_calibration_and_state_dict(binning):
    torch.manual_seed(0)
    scale, shift = torch.linspace(0.1, 5.0, 6), torch.linspace(-3.0, 3.0, 6)
    z = torch.randn(20000, 6) * scale + shift
    quantizer = DimensionWiseQuantizer(6, num_bins=32, binning=binning)
    uncalibrated = (quantizer(z).quantized - z).square().mean()
    quantizer.calibrate(z)
    out = quantizer(z)
    calibrated = (out.quantized - z).square().mean(dim=0)
    assert float(calibrated.mean()) < 0.1 * float(uncalibrated)
    # error relative to each channel's variance is about the same for every channel
    relative = calibrated / scale.square()
    assert float(relative.max()) < 0.02
    assert float(out.metrics["usage/min"]) == 1.0
    if binning == "gaussian":  # equal-probability bins: perplexity near num_bins
        assert float(out.metrics["perplexity/min"]) > 0.95 * 32
    # the calibration lives in the state dict
    state = quantizer.state_dict()
    assert {"edges", "centers", "calibrated"} <= set(state)
    restored = DimensionWiseQuantizer(6, num_bins=32, binning=binning)
    restored.load_state_dict(state)
    assert bool(restored.calibrated)
    assert torch.equal(restored.encode(z), out.codes)


def test_dimwise_error_falls_with_more_bins():
    z = torch.randn(10000, 4)
    errors = []
    for num_bins in (4, 16, 64):
        quantizer = DimensionWiseQuantizer(4, num_bins=num_bins)
        quantizer.calibrate(z)
        errors.append(float((quantizer(z).quantized - z).square().mean()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-2
    # 4 equal-probability bins of N(0, 1) with centroid centres: MSE = 1 - sum_i p_i c_i^2
    # = 0.1394 (Lloyd-Max's optimum is 0.1175)
    assert math.isclose(errors[0], 0.1394, rel_tol=0.05)
