"""VQ-family quantizers: parity with vector-quantize-pytorch, the quantizer contract, gradients,
training sanity, bounded memory and torch.compile."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from einops import rearrange
from host_syncs import HostSyncs
from torch.utils._python_dispatch import TorchDispatchMode

from anytok.quantizers import (
    GroupedResidualVQ,
    MultiScaleResidualVQ,
    ResidualVQ,
    SimVQ,
    VectorQuantize,
    build,
    list_quantizers,
)
from anytok.quantizers.base import squared_error_mean, straight_through
from anytok.quantizers.distributed import shared_randint
from anytok.quantizers.multiscale import VAR_SCALES
from anytok.quantizers.vq import rotation_trick

vqp = pytest.importorskip("vector_quantize_pytorch")

DIM = 16

#: (registered name, constructor kwargs, input shape): one small instance of every variant.
CASES = {
    "vq": ("vq", {"dim": DIM, "codebook_size": 32}, (2, 12, DIM)),
    "vq-cosine-factorized": (
        "vq",
        {
            "dim": DIM,
            "codebook_size": 32,
            "codebook_dim": 4,
            "use_cosine_sim": True,
            "learnable_codebook": True,
            "rotation_trick": True,
        },
        (2, 3, 5, DIM),
    ),
    "vq-kmeans-revival": (
        "vq",
        {"dim": DIM, "codebook_size": 32, "kmeans_init": True, "threshold_ema_dead_code": 1.0},
        (2, 12, DIM),
    ),
    "simvq": ("simvq", {"dim": DIM, "codebook_size": 32}, (2, 12, DIM)),
    "rvq": (
        "rvq",
        {"dim": DIM, "num_quantizers": 3, "codebook_size": (32, 16, 8), "quantize_dropout": True},
        (2, 12, DIM),
    ),
    "rvq-shared-dac": (
        "rvq",
        {
            "dim": DIM,
            "num_quantizers": 3,
            "codebook_size": 32,
            "shared_codebook": True,
            "codebook_dim": 4,
            "use_cosine_sim": True,
            "threshold_ema_dead_code": 1.0,
        },
        (2, 4, 3, DIM),
    ),
    "grvq": (
        "grvq",
        {"dim": DIM, "groups": 2, "num_quantizers": 3, "codebook_size": 16},
        (2, 12, DIM),
    ),
    "multiscale-2d": (
        "multiscale",
        {"dim": 8, "codebook_size": 32, "scales": (1, 2, 3, 4)},
        (2, 4, 4, 8),
    ),
    "multiscale-3d": (
        "multiscale",
        {
            "dim": 8,
            "codebook_size": 32,
            "scales": (1, (1, 2, 2), (2, 4, 4)),
            "spatial_dims": 3,
            "threshold_ema_dead_code": 1.0,
        },
        (2, 2, 4, 4, 8),
    ),
}

OUR_NAMES = ("vq", "simvq", "rvq", "grvq", "multiscale")


def make(case: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    name, kwargs, shape = CASES[case]
    torch.manual_seed(seed)
    random.seed(seed)  # quantizer dropout draws its level counts from Python's generator
    return build(name, **kwargs), torch.randn(shape)


def train_steps(quantizer: torch.nn.Module, z: torch.Tensor, steps: int = 3) -> None:
    quantizer.train()
    z = z.clone().requires_grad_(True)
    for _ in range(steps):
        out = quantizer(z)
        (out.quantized.square().mean() + out.loss).backward()


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("use_cosine_sim", [False, True], ids=["euclidean", "cosine"])
def test_vq_matches_vector_quantize_pytorch(use_cosine_sim: bool) -> None:
    torch.manual_seed(0)
    reference = vqp.VectorQuantize(dim=32, codebook_size=256, use_cosine_sim=use_cosine_sim)
    ours = VectorQuantize(32, 256, use_cosine_sim=use_cosine_sim)
    ours.set_codebook_(reference.codebook.detach())
    reference.eval(), ours.eval()
    z = torch.randn(4, 50, 32)
    with torch.no_grad():
        ref_quantized, ref_codes, _ = reference(z)
        out = ours(z)
    assert torch.equal(out.codes[..., 0], ref_codes)
    torch.testing.assert_close(out.quantized, ref_quantized, rtol=0, atol=1e-6)


def test_rvq_matches_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    reference = vqp.ResidualVQ(dim=32, num_quantizers=4, codebook_size=128).eval()
    ours = ResidualVQ(32, 4, 128).eval()
    for level, layer in enumerate(reference.layers):
        ours.stage(level).set_codebook_(layer.codebook.detach())
    z = torch.randn(4, 50, 32)
    with torch.no_grad():
        ref_quantized, ref_codes, _ = reference(z)
        out = ours(z)
        assert torch.equal(ours.encode(z), ref_codes)
    assert torch.equal(out.codes, ref_codes)
    torch.testing.assert_close(out.quantized, ref_quantized, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("case", list(CASES))
def test_decode_of_encode_equals_forward_in_eval(case: str) -> None:
    quantizer, z = make(case)
    train_steps(quantizer, z)  # move codebooks, EMA statistics, k-means away from their init
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(z)
        codes = quantizer.encode(z)
        decoded = quantizer.decode(codes)
    assert torch.equal(codes, out.codes)
    assert torch.equal(decoded, out.quantized)
    assert out.quantized.shape == z.shape
    assert out.codes.dtype == torch.int64
    assert out.codes.shape[-1] == len(quantizer.codebook_sizes)
    sizes = torch.tensor(quantizer.codebook_sizes)
    assert (codes >= 0).all() and (codes < sizes).all()
    assert out.loss.ndim == 0 and float(out.loss) == 0.0
    assert all(value.ndim == 0 for value in out.metrics.values())


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_reach_the_input(case: str) -> None:
    quantizer, z = make(case)
    quantizer.train()
    z.requires_grad_(True)
    out = quantizer(z)
    assert out.loss.ndim == 0 and out.loss.requires_grad
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert {"perplexity", "usage"} <= {name.split("/")[0] for name in out.metrics}


def test_straight_through_is_identity_gradient() -> None:
    vq = VectorQuantize(DIM, 32, commitment_weight=0.0).train()
    z = torch.randn(3, 7, DIM, requires_grad=True)
    weights = torch.randn(3, 7, DIM)
    (vq(z).quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)


def test_straight_through_is_a_view_with_scaled_identity_gradient() -> None:
    target = torch.randn(6, 5, requires_grad=True)  # e.g. a learnable codebook's rows
    source = torch.randn(6, 5, requires_grad=True)
    codewords = target * 1.0
    out = straight_through(codewords, source)
    assert out.data_ptr() == codewords.data_ptr() and torch.equal(out, codewords)  # no copy
    upstream = torch.randn(6, 5)
    (out * upstream).sum().backward()
    assert torch.equal(source.grad, upstream) and target.grad is None
    (codewords * upstream).sum().backward()  # codewords' own graph was not consumed
    assert torch.equal(target.grad, upstream)
    scale = torch.rand(5)  # per-channel, as FSQ's step sizes
    source.grad = None
    (straight_through(codewords, source, scale) * upstream).sum().backward()
    torch.testing.assert_close(source.grad, upstream * scale)
    half = straight_through(codewords.detach().half(), source)  # promoted like `a + b`
    assert half.dtype == torch.float32
    with torch.no_grad():
        untracked = straight_through(codewords, source)
    assert untracked.data_ptr() == codewords.data_ptr() and not untracked.requires_grad
    # a source without gradient: target still gets none (as source + (target - source).detach())
    frozen = straight_through(codewords, source.detach())
    assert frozen.data_ptr() == codewords.data_ptr() and not frozen.requires_grad
    with pytest.raises(ValueError, match=r"target \(6, 5\) and source \(5,\)"):
        straight_through(codewords, source[0])


@pytest.mark.parametrize("sides", ["both", "x", "y"])
def test_squared_error_mean_equals_mse_loss(sides: str) -> None:
    g = torch.Generator().manual_seed(3)
    x0, y0 = torch.randn(9, 7, generator=g), torch.randn(9, 7, generator=g)
    results = []
    for loss_fn in (squared_error_mean, torch.nn.functional.mse_loss):
        x = x0.clone().requires_grad_(sides in ("both", "x"))
        y = y0.clone().requires_grad_(sides in ("both", "y"))
        loss = loss_fn(x, y)
        (loss * 3.0).backward()
        results.append((loss.detach(), x.grad, y.grad))
    for ours, theirs in zip(*results):
        if theirs is None:
            assert ours is None
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="shapes"):
        squared_error_mean(x0, y0[:1])


def test_vq_training_step_peak_memory() -> None:
    """One training step (search, EMA, straight-through, commitment; forward + backward of
    ``loss + quantized.square().mean()``) peaks at about 5 input-sized tensors besides the
    search's O(N) workspace: the straight-through output is a view of the codewords, and the
    commitment loss keeps one temporary per pass. It was 7 before; vector-quantize-pytorch's
    step is 25 at this size (``benchmarks/vq_train_memory.py``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from vq_train_memory import anytok_step, peak_bytes

    n, d, k = 4096, 64, 256
    step = anytok_step(n, d, k, search_stand_in=True)
    step()
    assert peak_bytes(step) <= 5.5 * n * d * 4


def test_rvq_sum_of_stages_has_identity_gradient() -> None:
    """The residual passed on is ``r - q`` with each stage's straight-through output, so the
    input gets exactly the upstream gradient (DAC), not ``num_quantizers`` times it."""
    rvq = ResidualVQ(DIM, 4, 32, commitment_weight=0.0).train()
    z = torch.randn(3, 7, DIM, requires_grad=True)
    weights = torch.randn(3, 7, DIM)
    (rvq(z).quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)


@pytest.mark.parametrize(
    "vq_kwargs",
    [
        {},
        {"learnable_codebook": True},
        {"codebook_dim": 4, "learnable_codebook": True},
        {"use_cosine_sim": True},
        {"rotation_trick": True},
    ],
    ids=["ema", "learnable", "projected", "cosine", "rotation"],
)
def test_rvq_detached_residual_changes_no_value_or_gradient(
    vq_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a stage's output gradient is the identity, the residual it passes on is detached
    (its gradient is exactly zero). Loss, output, codes, every gradient and every codebook
    statistic equal those of the full graph, bit for bit."""

    def step() -> list[torch.Tensor]:
        torch.manual_seed(0)
        rvq = ResidualVQ(DIM, 4, 32, **vq_kwargs).train()
        z = torch.randn(3, 40, DIM, requires_grad=True)
        weights = torch.randn(3, 40, DIM)
        for _ in range(2):  # the second step sees EMA-updated codebooks
            z.grad = None
            rvq.zero_grad()
            out = rvq(z)
            (out.loss + (out.quantized * weights).sum()).backward()
        grads = [p.grad for p in rvq.parameters()]
        return [out.loss, out.quantized, out.codes, z.grad, *grads, *rvq.buffers()]

    detaching = step()
    assert VectorQuantize(DIM, 8, **vq_kwargs).output_gradient_is_identity == (
        not vq_kwargs or vq_kwargs == {"learnable_codebook": True}
    )
    monkeypatch.setattr(VectorQuantize, "output_gradient_is_identity", property(lambda _: False))
    full_graph = step()
    assert len(detaching) == len(full_graph)
    for ours, reference in zip(detaching, full_graph, strict=True):
        assert torch.equal(ours, reference)


def test_rvq_training_step_peak_memory() -> None:
    """A 4-stage step peaks at about 6 input-sized tensors (12 with a graph through every
    stage; vector-quantize-pytorch's is 70, ``benchmarks/vq_train_memory.py --levels 4``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from vq_train_memory import peak_bytes

    n, d = 4096, 64
    torch.manual_seed(0)
    rvq = ResidualVQ(d, 4, 256, memory_budget=1 << 18).train()  # 256 KiB search blocks
    z = torch.randn(n, d, requires_grad=True)

    def step() -> None:
        out = rvq(z)
        (out.loss + out.quantized.square().mean()).backward()

    step()
    assert peak_bytes(step) <= 6.5 * n * d * 4


def test_rotation_trick_keeps_value_and_rotates_gradient() -> None:
    torch.manual_seed(0)
    source = torch.randn(64, 8, requires_grad=True)
    target = torch.randn(64, 8)
    rotated = rotation_trick(source, target)
    torch.testing.assert_close(rotated, target, rtol=0, atol=1e-5)
    upstream = torch.randn(64, 8)
    (rotated * upstream).sum().backward()
    # the gradient is the upstream gradient rotated and scaled by |target| / |source|
    scale = target.norm(dim=-1) / source.detach().norm(dim=-1)
    torch.testing.assert_close(source.grad.norm(dim=-1), upstream.norm(dim=-1) * scale)
    assert not torch.allclose(source.grad, upstream)


def test_rotation_trick_quantizer_gradient_differs_from_straight_through() -> None:
    z = torch.randn(4, 10, DIM)
    grads = []
    for rotation in (False, True):
        torch.manual_seed(0)
        vq = VectorQuantize(DIM, 32, rotation_trick=rotation, commitment_weight=0.0).train()
        x = z.clone().requires_grad_(True)
        vq(x).quantized.square().sum().backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[1]).all() and not torch.allclose(grads[0], grads[1])


def test_learnable_codebook_and_projections_receive_gradients() -> None:
    quantizer, z = make("vq-cosine-factorized")
    out = quantizer.train()(z)
    (out.quantized.square().mean() + out.loss).backward()
    for name, parameter in quantizer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_simvq_trains_the_map_not_the_frozen_codebook() -> None:
    simvq = SimVQ(DIM, 64, rotation_trick=False).train()
    z = torch.randn(4, 16, DIM, requires_grad=True)
    out = simvq(z)
    (out.quantized.sum() + out.loss).backward()
    assert "frozen_codebook" in dict(simvq.named_buffers())
    assert [name for name, _ in simvq.named_parameters()] == ["code_transform.weight"]
    assert simvq.code_transform.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["vq", "rvq", "grvq", "simvq"])
@pytest.mark.parametrize(
    "shape", [(2, 9, DIM), (2, 3, 4, DIM), (5, DIM)], ids=["bnd", "bhwd", "nd"]
)
def test_shapes(case: str, shape: tuple[int, ...]) -> None:
    quantizer, _ = make(case)
    z = torch.randn(shape)
    for mode in (True, False):
        out = quantizer.train(mode)(z)
        assert out.quantized.shape == z.shape
        assert out.codes.shape == (*shape[:-1], len(quantizer.codebook_sizes))


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_channel_count_is_a_clear_error(case: str) -> None:
    quantizer, z = make(case)
    wrong = torch.randn(*z.shape[:-1], z.shape[-1] + 1)
    with pytest.raises(ValueError, match="expected"):
        quantizer(wrong)
    with pytest.raises(ValueError, match="expected"):
        quantizer.encode(wrong)


def test_decode_rejects_bad_codes() -> None:
    vq, _ = make("vq")
    with pytest.raises(ValueError, match="out of range"):
        vq.decode(torch.full((2, 3, 1), 32))
    with pytest.raises(TypeError, match="integer"):
        vq.decode(torch.zeros(2, 3, 1))
    rvq, _ = make("rvq")
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        rvq.decode(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        rvq.decode(torch.tensor([[0, 16]]))  # level 1 has 16 codes
    ms, _ = make("multiscale-2d")
    with pytest.raises(ValueError, match="last scale"):
        ms(torch.randn(2, 5, 5, 8))
    with pytest.raises(ValueError, match=r"\(b, 30, 1\)"):
        ms.decode(torch.zeros(2, 29, 1, dtype=torch.long))


def test_quantization_runs_in_fp32_under_autocast() -> None:
    rvq, z = make("rvq")
    rvq.eval()
    z = z.bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = rvq(z)
    assert out.quantized.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(out.codes, rvq.encode(z.float()))


def test_state_dict_round_trip_keeps_codes() -> None:
    quantizer, z = make("vq-kmeans-revival")
    train_steps(quantizer, z)
    fresh, _ = make("vq-kmeans-revival", seed=1)
    fresh.load_state_dict(quantizer.state_dict(), strict=True)
    quantizer.eval(), fresh.eval()
    assert bool(fresh.initted)
    assert torch.equal(fresh.encode(z), quantizer.encode(z))


# --------------------------------------------------------------------------- residual specifics


def test_rvq_fewer_levels_is_a_coarser_prefix() -> None:
    rvq, z = make("rvq")
    train_steps(rvq, z)
    rvq.eval()
    with torch.no_grad():
        full = rvq.encode(z)
        errors = []
        for levels in (1, 2, 3):
            codes = rvq.encode(z, n_levels=levels)
            assert torch.equal(codes, full[..., :levels])
            assert torch.equal(rvq.decode(codes), rvq(z, n_levels=levels).quantized)
            errors.append(float((rvq.decode(codes) - z).square().mean()))
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(ValueError, match="n_levels"):
        rvq.encode(z, n_levels=4)


def test_quantize_dropout_draws_level_counts_and_marks_dropped_levels() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(DIM, 4, 16, quantize_dropout=True, quantize_dropout_cutoff_index=1).train()
    z = torch.randn(2, 8, DIM)
    used = set()
    for _ in range(40):
        codes = rvq(z).codes
        levels = int((codes[0, 0] >= 0).sum())
        assert (codes[..., :levels] >= 0).all() and (codes[..., levels:] == -1).all()
        used.add(levels)
    assert used == {2, 3, 4}
    assert (rvq.eval()(z).codes >= 0).all()  # no dropout in eval


def test_shared_codebook_is_one_module() -> None:
    rvq, z = make("rvq-shared-dac")
    assert len(rvq.layers) == 1 and rvq.stage(0) is rvq.stage(2)
    train_steps(rvq, z)
    assert "dead_codes/shared" in rvq.train()(z).metrics


def test_grvq_codes_are_group_major() -> None:
    grvq, z = make("grvq")
    assert isinstance(grvq, GroupedResidualVQ)
    grvq.eval()
    codes = grvq.encode(z)
    grid = rearrange(codes, "... (g l) -> ... g l", g=2)
    for group, (rvq, chunk) in enumerate(zip(grvq.rvqs, z.chunk(2, dim=-1))):
        assert torch.equal(grid[..., group, :], rvq.encode(chunk))
    two_levels = grvq.encode(z, n_levels=2)
    assert torch.equal(two_levels, rearrange(grid[..., :2], "... g l -> ... (g l)"))
    assert grvq.decode(two_levels).shape == z.shape


# --------------------------------------------------------------------------- multi-scale


@pytest.mark.parametrize("case", ["multiscale-2d", "multiscale-3d"])
def test_multiscale_code_layout(case: str) -> None:
    ms, z = make(case)
    assert isinstance(ms, MultiScaleResidualVQ)
    ms.eval()
    codes = ms.encode(z)
    assert codes.shape == (z.shape[0], sum(ms.scale_token_counts), 1)
    grids = ms.split_scales(codes)
    assert [tuple(g.shape[1:-1]) for g in grids] == list(ms.scales)
    assert torch.equal(ms.merge_scales(grids), codes)
    # the coarsest scale of a 2D latent is one token per image: quantized mean of the latent
    if ms.scales[0] == (1, 1):
        mean = z.mean(dim=(1, 2))
        assert torch.equal(grids[0][:, 0, 0, 0], ms.quantizer.encode(mean)[:, 0])


def _var_phi_index(scale: int, num_scales: int, num_convs: int) -> int:
    """VAR's ``PhiPartiallyShared`` choice (FoundationVision/VAR, ``models/quant.py``)."""
    k = num_convs
    ticks = (
        np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        if k == 4
        else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    )
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


@pytest.mark.parametrize(
    ("scales", "num_convs", "expected"),
    [
        (VAR_SCALES, 4, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]),  # the old rule gave 2 at scale 7
        (VAR_SCALES, 3, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]),
        ((1, 2, 3, 4, 6, 8), 4, [0, 0, 1, 2, 3, 3]),
        ((1, 2, 3, 4, 5, 6), 5, [0, 0, 1, 2, 3, 4]),  # the old rule: [0, 1, 2, 2, 3, 4]
        ((1, 2, 3, 4, 5, 6, 7), 3, [0, 0, 0, 1, 1, 2, 2]),  # the old rule: 1 at scale 2
    ],
)
def test_multiscale_refinement_conv_per_scale_is_vars(
    scales: tuple[int, ...], num_convs: int, expected: list[int]
) -> None:
    """Scale ``k`` of ``S`` uses the convolution whose tick is nearest ``k / (S - 1)``, as
    VAR's PhiPartiallyShared (it was ``round(k / (S - 1) * (K - 1))``, which differs)."""
    assert expected == [_var_phi_index(k, len(scales), num_convs) for k in range(len(scales))]
    ms = MultiScaleResidualVQ(2, 4, scales=scales, refine_convs=num_convs).eval()
    used: list[int] = []
    hooks = [
        conv.register_forward_hook(lambda *_, j=j: used.append(j))
        for j, conv in enumerate(ms.refiners)
    ]
    with torch.no_grad():
        for scale, size in enumerate(ms.scales):
            ms._scale_contribution(torch.zeros(1, *size, dtype=torch.long), scale)
    for hook in hooks:
        hook.remove()
    assert used == expected


def test_multiscale_refiner_indices_match_var_on_ties() -> None:
    """Scales exactly halfway between two ticks resolve as VAR's numpy code does."""
    from anytok.quantizers.multiscale import refiner_indices

    for num_scales in range(2, 40):
        for num_convs in range(1, 9):
            assert list(refiner_indices(num_scales, num_convs)) == [
                _var_phi_index(k, num_scales, num_convs) for k in range(num_scales)
            ], (num_scales, num_convs)


def test_multiscale_more_scales_reconstruct_better() -> None:
    torch.manual_seed(0)
    ms = MultiScaleResidualVQ(8, 64, scales=(1, 2, 4, 8), refine_convs=0).eval()
    z = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        grids = ms.split_scales(ms.encode(z))
        errors = []
        for used in range(1, 5):
            partial = [g if i < used else None for i, g in enumerate(grids)]
            f_hat = sum(
                ms._scale_contribution(g[..., 0], i) for i, g in enumerate(partial) if g is not None
            )
            errors.append(float((rearrange(f_hat, "b d h w -> b h w d") - z).square().mean()))
    assert errors == sorted(errors, reverse=True)


# --------------------------------------------------------------------------- training sanity


def _mixture(n: int, centers: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    which = torch.randint(0, centers.shape[0], (n,), generator=generator)
    return centers[which] + 0.05 * torch.randn(n, centers.shape[1], generator=generator)


@pytest.mark.parametrize("threshold", [0.0, 2.0], ids=["no-revival", "revival"])
def test_ema_training_on_gaussian_mixture(threshold: float) -> None:
    """64 clusters, 64 codes, random init far from the data: EMA alone leaves most codes dead,
    dead-code revival brings usage to >= 95% of the codebook."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(64, DIM, generator=generator) * 2 + 3
    vq = VectorQuantize(DIM, 64, threshold_ema_dead_code=threshold)
    held_out = _mixture(8192, centers, generator)
    with torch.no_grad():
        before = float((vq.eval()(held_out).quantized - held_out).square().mean())
        vq.train()
        for _ in range(200):
            vq(_mixture(1024, centers, generator))
        out = vq.eval()(held_out)
    after = float((out.quantized - held_out).square().mean())
    used = out.codes.unique().numel()
    assert after < 0.2 * before
    if threshold > 0:  # over seeds 0-19: 0.17-0.45 with revival, 0.90-1.92 without
        assert used >= 0.95 * 64 and after < 0.5
    else:
        assert used < 0.95 * 64  # the revival is what makes the difference


@pytest.mark.parametrize(
    ("rows", "num_dead", "learnable"),
    [(40, 6, False), (10, 6, True), (3, 6, False), (0, 6, False), (10, 0, False)],
    ids=["rows>=codes", "dead<=rows<codes", "rows<dead", "no-rows", "none-dead"],
)
def test_revival_replaces_only_dead_codes_with_distinct_rows(
    rows: int, num_dead: int, learnable: bool
) -> None:
    """Dead codes get distinct rows of the batch (all of them, or ``rows`` of them), with
    their EMA count reset to the threshold and their EMA sum to row x threshold; live codes
    and their statistics are untouched."""
    torch.manual_seed(rows + num_dead)
    k, threshold = 24, 1.5
    vq = VectorQuantize(4, k, threshold_ema_dead_code=threshold, learnable_codebook=learnable)
    dead = torch.zeros(k, dtype=torch.bool)
    dead[torch.randperm(k)[:num_dead]] = True
    vq.ema_cluster_size.copy_(torch.where(dead, 0.5, 3.0))
    before = {name: t.detach().clone() for name, t in vq.state_dict().items()}
    x = torch.randn(rows, 4)
    replaced = vq.revive_dead_codes_(x)
    changed = (vq.embedding.data != before["embedding"]).any(-1)
    assert int(replaced) == int(changed.sum()) == min(num_dead, rows)
    assert not (changed & ~dead).any()
    new_rows = vq.embedding.data[changed]
    matches = (new_rows.unsqueeze(1) == x.unsqueeze(0)).all(-1)  # (replaced, rows)
    assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()  # distinct batch rows
    sizes = vq.ema_cluster_size
    assert torch.equal(sizes[changed], torch.full_like(sizes[changed], threshold))
    assert torch.equal(sizes[~changed], before["ema_cluster_size"][~changed])
    if not learnable:
        sums = vq.ema_embedding_sum
        assert torch.allclose(sums[changed], new_rows * threshold)
        assert torch.equal(sums[~changed], before["ema_embedding_sum"][~changed])


def test_revival_subset_is_uniform_over_dead_codes() -> None:
    """With fewer rows than dead codes, which dead codes are replaced is random: over many
    draws every dead code is chosen about equally often (not, say, the lowest indices)."""
    torch.manual_seed(0)
    vq = VectorQuantize(2, 64, threshold_ema_dead_code=1.0)
    dead = torch.arange(64) % 8 == 3  # 8 dead codes
    chosen = torch.zeros(64)
    for _ in range(400):
        vq.ema_cluster_size.copy_(torch.where(dead, 0.0, 5.0))
        old = vq.embedding.data.clone()
        assert int(vq.revive_dead_codes_(torch.randn(2, 2))) == 2
        chosen += (vq.embedding.data != old).any(-1).float()
    assert chosen[~dead].sum() == 0
    assert chosen[dead].sum() == 800 and chosen[dead].min() > 60  # expected 100 each


def test_learnable_codebook_training_reduces_error() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(32, DIM, generator=generator)
    vq = VectorQuantize(DIM, 32, learnable_codebook=True)
    optimizer = torch.optim.Adam(vq.parameters(), lr=3e-2)
    held_out = _mixture(2048, centers, generator)
    with torch.no_grad():
        before = float((vq.eval()(held_out).quantized - held_out).square().mean())
    vq.train()
    for _ in range(100):
        out = vq(_mixture(512, centers, generator))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float((vq.eval()(held_out).quantized - held_out).square().mean())
    assert after < 0.1 * before


def test_kmeans_init_fits_the_first_batch() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(16, DIM, generator=generator) * 3
    vq = VectorQuantize(DIM, 16, kmeans_init=True)
    assert not bool(vq.initted)
    batch = _mixture(2048, centers, generator)
    with torch.no_grad():
        before = float((vq.eval()(batch).quantized - batch).square().mean())
        vq.train()(batch)
        assert bool(vq.initted)
        torch.testing.assert_close(vq.ema_cluster_size.sum(), torch.tensor(2048.0))
        out = vq.eval()(batch)
    after = float((out.quantized - batch).square().mean())
    # Lloyd from random samples (as vector-quantize-pytorch) can merge clusters; it still
    # lands far closer to the data than the random codebook and uses every code
    assert after < 0.25 * before and out.codes.unique().numel() == 16


# --------------------------------------------------------------------------- memory / compile / registry


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("case", ["vq", "rvq"])
def test_training_step_never_materialises_n_by_k(case: str) -> None:
    """A training step (k-means init, search, EMA update, revival, usage, backward) with a
    small search budget: no tensor reaches ``n x k`` elements (a one-hot or full distance
    matrix would be exactly that)."""
    n, k, c = 4096, 1024, 8
    kwargs = {"kmeans_init": True, "kmeans_iters": 2, "threshold_ema_dead_code": 1.0}
    kwargs["memory_budget"] = 64 * (k + c) * 4  # 64 rows per chunk (scores and their x rows)
    if case == "vq":
        quantizer = VectorQuantize(c, k, **kwargs)
    else:
        quantizer = ResidualVQ(c, 2, k, **kwargs)
    z = torch.randn(n, c, requires_grad=True)
    with _LargestTensor() as probe:
        for _ in range(2):
            out = quantizer.train()(z)
            (out.quantized.sum() + out.loss).backward()
    assert probe.largest < n * k // 8, probe.largest
    assert probe.largest >= 64 * k  # the chunked distance block itself was seen


@pytest.mark.parametrize("case", ["vq-cosine-factorized", "rvq"])
def test_eval_forward_compiles_fullgraph(case: str) -> None:
    """fullgraph=True fails on any graph break, which dynamo finds while capturing, whatever
    the backend; aot_eager also traces through AOT autograd but skips inductor's C++ codegen
    (about 40 s on 2 CPU cores), so this stays cheap."""
    torch._dynamo.reset()
    quantizer, z = make(case)
    quantizer.eval()
    compiled = torch.compile(quantizer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = quantizer(z)
        out = compiled(z)
    assert torch.equal(out.codes, expected.codes)
    torch.testing.assert_close(out.quantized, expected.quantized)
    assert out.metrics.keys() == expected.metrics.keys()


@pytest.mark.parametrize("name", OUR_NAMES)
def test_every_vq_family_name_is_buildable(name: str) -> None:
    assert name in list_quantizers()
    case = next(key for key, (registered, _, _) in CASES.items() if registered == name)
    quantizer, z = make(case)
    assert quantizer.eval()(z).quantized.shape == z.shape


def test_host_sync_detector_sees_syncs_inside_ops() -> None:
    """The detector flags ops whose CUDA kernels copy a value to the host, not only
    ``.item()``; ordinary indexing and scatter-adds pass."""
    x = torch.randn(10)
    with HostSyncs() as syncs:
        torch.bincount(torch.tensor([1, 3]), minlength=5)
        x[x > 0]
        torch.repeat_interleave(torch.tensor([1, 2]))
        float(x.sum())
        x[torch.tensor([1, 2])]
        torch.zeros(5).index_add_(0, torch.tensor([1, 1]), torch.ones(2))
        torch.repeat_interleave(x, 2)
    assert syncs.ops == ["bincount", "index", "repeat_interleave", "_local_scalar_dense"]


SYNC_FREE = {
    "vq": dict(dim=16, codebook_size=32),
    "vq-kmeans": dict(dim=16, codebook_size=32, kmeans_init=True),  # EnCodec, WavTokenizer
    "vq-revival": dict(dim=16, codebook_size=32, threshold_ema_dead_code=2.0),
    "vq-revival-subset": dict(dim=16, codebook_size=128, threshold_ema_dead_code=2.0),
    "rvq-revival": dict(  # EnCodec's training quantizer, small
        dim=16, num_quantizers=3, codebook_size=32, kmeans_init=True, threshold_ema_dead_code=2.0
    ),
    "rvq": dict(dim=16, num_quantizers=3, codebook_size=32),
    "grvq": dict(dim=16, groups=2, num_quantizers=2, codebook_size=32),
    "simvq": dict(dim=16, codebook_size=32),
    "fsq": dict(levels=[8, 5, 5]),
    "rfsq": dict(levels=[8, 5, 5], num_quantizers=2),
    "lfq": dict(dim=10, codebook_size=2**10),
    "bsq": dict(dim=8, codebook_dim=6),
    "rvq-dropout": dict(dim=16, num_quantizers=4, codebook_size=32, quantize_dropout=True),
    "rfsq-dropout": dict(levels=[8, 5, 5], num_quantizers=3, quantize_dropout=True),
}


@pytest.mark.parametrize("name", sorted(SYNC_FREE))
def test_steady_state_steps_never_wait_for_the_device(name: str) -> None:
    """After the first batch, a training step (forward + backward) and an eval forward make
    no host synchronisation: on a GPU each would stall the launch queue every step. (The
    usage tracker used to branch on a device flag, and eval metrics called ``.item()``.)"""
    quantizer = build(name.split("-")[0], **SYNC_FREE[name])
    z = torch.randn(4, 20, getattr(quantizer, "dim", 3), requires_grad=True)
    for mode in ("train", "eval"):
        getattr(quantizer, mode)()
        quantizer(z)  # first batch: initialisation may synchronise
        with HostSyncs() as syncs:
            out = quantizer(z)
            if mode == "train":
                (out.loss + out.quantized.square().mean()).backward()
        assert syncs.count == 0, f"{name} {mode}: host synchronisations {syncs.ops}"


def test_quantizer_dropout_depth_never_touches_the_device() -> None:
    """On one process the dropout depth comes from Python's ``random``: drawing it touches no
    tensor (not even for a device that holds no data), is uniform over the range and follows
    the seed. (It used to be drawn on the device and read back, one sync per step.)"""
    random.seed(0)
    with HostSyncs() as syncs:
        draws = [shared_randint(3, 9, torch.device("meta")) for _ in range(600)]
    assert syncs.count == 0
    assert set(draws) == set(range(3, 9)) and min(map(draws.count, set(draws))) > 60
    random.seed(0)
    assert [shared_randint(3, 9, torch.device("meta")) for _ in range(600)] == draws


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(SYNC_FREE))
def test_gpu_steady_state_steps_never_wait_for_the_device(name: str) -> None:
    """The same on a GPU, judged by CUDA itself: with the sync debug mode at "error" any call
    that makes the host wait for the device raises (the detector above only knows its list)."""
    quantizer = build(name.split("-")[0], **SYNC_FREE[name]).cuda()
    z = torch.randn(4, 20, getattr(quantizer, "dim", 3), device="cuda", requires_grad=True)
    for mode in ("train", "eval"):
        getattr(quantizer, mode)()
        quantizer(z)  # first batch: initialisation and autotuning may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = quantizer(z)
            if mode == "train":
                (out.loss + out.quantized.square().mean()).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_kmeans_init_state_survives_host_caching() -> None:
    """k-means runs on the first training batch, not again, and again after loading a state
    whose codebook was never initialised (the host copy of ``initted`` is re-read)."""
    torch.manual_seed(0)
    fresh = VectorQuantize(DIM, 16, kmeans_init=True).state_dict()
    vq = VectorQuantize(DIM, 16, kmeans_init=True).train()
    z = torch.randn(256, DIM)
    vq(z)
    assert bool(vq.initted)
    after_init = vq.embedding.clone()
    vq(z + 5.0)  # no second k-means: only the EMA moves the codebook
    assert not torch.allclose(vq.embedding, after_init + 5.0, atol=0.5)
    vq.load_state_dict(fresh)
    assert not bool(vq.initted)
    vq(z + 5.0)  # k-means again, on the shifted batch
    assert bool(vq.initted)
    assert vq.embedding.mean() > 4.0


# --------------------------------------------------------------------------- non-finite inputs

NONFINITE_CASES = {
    "vq": lambda: VectorQuantize(8, 16),
    "vq-cosine": lambda: VectorQuantize(8, 16, use_cosine_sim=True, codebook_dim=4),
    "vq-learnable": lambda: VectorQuantize(8, 16, learnable_codebook=True),
    "rvq": lambda: ResidualVQ(8, 3, 16),
    "rvq-shared": lambda: ResidualVQ(8, 3, 16, shared_codebook=True),
}


@pytest.mark.parametrize("case", list(NONFINITE_CASES))
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_row_leaves_ema_codebook_as_without_it(case: str, bad: float) -> None:
    """One non-finite vector in one training batch (an fp16 overflow the loss scaler skips)
    made its code's EMA sum NaN for good: every output was NaN after. Such rows are now left
    out of the EMA counts and sums (and of k-means): the state equals a run without that row."""
    torch.manual_seed(0)
    batches = [torch.randn(40, 8) for _ in range(4)]
    poisoned = batches[0].clone()
    poisoned[3, 0] = bad
    runs = []
    for first in (poisoned, torch.cat([batches[0][:3], batches[0][4:]])):
        torch.manual_seed(1)
        quantizer = NONFINITE_CASES[case]().train()
        for batch in (first, *batches[1:]):
            quantizer(batch)
        runs.append(quantizer.state_dict())
    for key, value in runs[0].items():
        if value.is_floating_point():
            assert bool(torch.isfinite(value).all()), f"{case}: {key} is not finite"
        torch.testing.assert_close(value, runs[1][key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("rows", [40, 10], ids=["more-rows-than-codes", "fewer"])
def test_kmeans_init_leaves_non_finite_rows_out(bad: float, rows: int) -> None:
    """k-means on a first batch holding a NaN / Inf row: finite centroids, the bad row in no
    count. (Its random draws cover every row, so it is not bit-equal to a run without the
    row: leaving rows out by indexing would be a host sync on every step a level waits for
    its k-means.)"""
    torch.manual_seed(0)
    batch = torch.randn(rows, 8)
    batch[3, 0] = bad
    quantizer = VectorQuantize(8, 16, kmeans_init=True, kmeans_iters=3).train()
    quantizer(batch)
    assert bool(quantizer.initted)
    for key, value in quantizer.state_dict().items():
        if value.is_floating_point():
            assert bool(torch.isfinite(value).all()), key
    # the initial counts of k-means, then one EMA step of this batch: rows - 1 vectors each
    decay = quantizer.decay
    counted = float(quantizer.ema_cluster_size.sum())
    assert counted == pytest.approx((rows - 1) * decay + (rows - 1) * (1 - decay), rel=1e-5)


@pytest.mark.parametrize(
    "make_quantizer",
    [
        lambda: VectorQuantize(8, 16, threshold_ema_dead_code=2.0),
        lambda: VectorQuantize(8, 64, threshold_ema_dead_code=2.0),  # fewer rows than codes
        lambda: MultiScaleResidualVQ(8, 16, scales=(1, 2, 4), threshold_ema_dead_code=1.0),
    ],
    ids=["revival", "revival-subset", "multiscale"],
)
def test_non_finite_row_never_revives_a_code_or_poisons_later_steps(
    make_quantizer: Callable[[], torch.nn.Module],
) -> None:
    torch.manual_seed(0)
    quantizer = make_quantizer().train()
    multiscale = isinstance(quantizer, MultiScaleResidualVQ)
    shape = (2, 4, 4, 8) if multiscale else (40, 8)
    z = torch.randn(shape)
    z.view(-1, 8)[3, 0] = float("inf")
    quantizer(z)
    for _ in range(5):
        quantizer(torch.randn(shape))
    for key, value in quantizer.state_dict().items():
        if value.is_floating_point():
            assert bool(torch.isfinite(value).all()), key
    out = quantizer.eval()(torch.randn(shape))
    assert bool(torch.isfinite(out.quantized).all())


def test_revival_draws_only_finite_rows() -> None:
    torch.manual_seed(0)
    vq = VectorQuantize(4, 64, threshold_ema_dead_code=1.0).train()
    with torch.no_grad():
        vq.ema_cluster_size.zero_()  # every code dead
    x = torch.randn(10, 4)
    x[::2, 1] = float("nan")  # 5 finite rows for 64 dead codes
    assert int(vq.revive_dead_codes_(x)) == 5
    assert bool(torch.isfinite(vq.embedding).all())
    assert bool(torch.isfinite(vq.ema_embedding_sum).all())
