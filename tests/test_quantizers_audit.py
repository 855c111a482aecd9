"""Audit of the quantizer package: the contract across every exported class, behaviour on
non-finite and low-precision inputs, and parity with vector-quantize-pytorch where it has the
same algorithm (the cases ``test_quantizers_vq.py`` / ``test_quantizers_scalar.py`` leave out).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from importlib.metadata import version

import pytest
import torch
from einops import rearrange
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from anytok.quantizers import (
    BSQ,
    FSQ,
    LFQ,
    BinaryQuantizer,
    DimensionWiseQuantizer,
    GroupedResidualVQ,
    GroupLFQ,
    MultiScaleResidualVQ,
    ResidualFSQ,
    ResidualVQ,
    SimVQ,
    SplitResidualVQ,
    VectorQuantize,
)

vqp = pytest.importorskip("vector_quantize_pytorch")

#: vector-quantize-pytorch 1.33 replaced the classic EMA update anytok implements (see the
#: pin in pyproject.toml); its later releases are no oracle for codebook statistics.
classic_ema_oracle = pytest.mark.skipif(
    tuple(int(part) for part in version("vector-quantize-pytorch").split(".")[:2]) >= (1, 33),
    reason="vector-quantize-pytorch >= 1.33 changed its EMA update; the oracle is 1.32.0 "
    "(make setup installs it)",
)

DIM = 8

#: One small instance of every exported quantizer class (and the variants that take other
#: code paths: projections, cosine, shared codebook, symmetric FSQ).
MAKERS: dict[str, Callable[[], torch.nn.Module]] = {
    "vq": lambda: VectorQuantize(DIM, 16, kmeans_init=True, threshold_ema_dead_code=1.0),
    "vq-factorized": lambda: VectorQuantize(
        DIM, 16, codebook_dim=4, use_cosine_sim=True, learnable_codebook=True
    ),
    "rvq": lambda: ResidualVQ(DIM, 3, 16, quantize_dropout=True),
    "rvq-shared": lambda: ResidualVQ(DIM, 3, 16, shared_codebook=True),
    "grvq": lambda: GroupedResidualVQ(DIM, 2, 2, 16),
    "split-rvq": lambda: SplitResidualVQ(DIM, 3, 16, codebook_dim=4, quantize_dropout=True),
    "simvq": lambda: SimVQ(DIM, 16),
    "fsq": lambda: FSQ([8, 5, 5], dim=DIM),
    "fsq-symmetric": lambda: FSQ([2, 4, 5], preserve_symmetry=True),
    "rfsq": lambda: ResidualFSQ([5, 5, 5], 2, dim=DIM),
    "lfq": lambda: LFQ(dim=DIM, codebook_size=2**4),
    "bsq": lambda: BSQ(dim=DIM, codebook_dim=6),
    "group-lfq": lambda: GroupLFQ(dim=DIM, codebook_dim=8, num_groups=2),
    "binary": lambda: BinaryQuantizer(dim=DIM, bits=16, bits_per_code=8),
    "dimwise": lambda: DimensionWiseQuantizer(DIM, 16),
    "multiscale": lambda: MultiScaleResidualVQ(DIM, 16, scales=(1, 2, 4), refine_convs=2),
}


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    random.seed(seed)
    return MAKERS[name]()


def sample(name: str, quantizer: torch.nn.Module, lead: tuple[int, ...] = (2, 3, 5)):
    if name == "multiscale":
        return torch.randn(2, 4, 4, DIM)
    return torch.randn(*lead, quantizer.dim)


def in_range(codes: torch.Tensor, quantizer: torch.nn.Module) -> bool:
    sizes = torch.tensor(quantizer.codebook_sizes)
    return bool(((codes >= 0) & (codes < sizes)).all())


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", list(MAKERS))
def test_contract_in_train_eval_and_autocast(name: str) -> None:
    quantizer = make(name).train()
    for _ in range(2):  # move codebooks / k-means / EMA statistics off their init
        z = sample(name, quantizer).requires_grad_(True)
        out = quantizer(z)
        assert out.loss.ndim == 0 and out.loss.dtype == torch.float32
        assert all(v.ndim == 0 and not v.requires_grad for v in out.metrics.values())
        (out.quantized.square().mean() + out.loss).backward()
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    quantizer.eval()
    z = sample(name, quantizer)
    with torch.no_grad():
        out = quantizer(z)
        codes = quantizer.encode(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_out = quantizer(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert codes.dtype == torch.int64 and codes.shape[-1] == len(quantizer.codebook_sizes)
    assert torch.equal(codes, out.codes) and in_range(codes, quantizer)
    assert torch.equal(quantizer.decode(codes), out.quantized)
    assert autocast_out.quantized.dtype == z.dtype
    if name not in ("fsq", "rfsq", "lfq", "bsq", "binary"):  # no bf16 projection in front
        assert torch.equal(autocast_out.codes, codes)
    # save / load into a differently seeded instance: identical codes and output
    # (through safetensors, never pickle; clones because shared codebooks alias storage)
    saved = save_tensors({k: v.clone() for k, v in quantizer.state_dict().items()})
    loaded = make(name, seed=1)
    loaded.load_state_dict(load_tensors(saved))
    loaded.eval()
    with torch.no_grad():
        again = loaded(z)
    assert torch.equal(again.codes, out.codes) and torch.equal(again.quantized, out.quantized)


@pytest.mark.parametrize("name", list(MAKERS))
def test_non_finite_inputs_get_codes_in_range(name: str) -> None:
    """No check (it would cost a host sync per step), but never an error or a code outside
    the codebook (which would crash an embedding lookup on a GPU); FSQ crashed on NaN."""
    quantizer = make(name).eval()
    z = sample(name, quantizer)
    flat = z.view(-1)
    flat[0], flat[DIM + 1], flat[2 * DIM + 2] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        out = quantizer(z)
        codes = quantizer.encode(z)
    assert in_range(out.codes, quantizer) and torch.equal(codes, out.codes)
    quantizer.decode(codes)


@pytest.mark.parametrize("name", ["fsq", "fsq-symmetric", "rfsq"])
def test_fsq_nan_gets_the_middle_level(name: str) -> None:
    quantizer = make(name).eval()
    z = torch.randn(4, quantizer.dim)
    z[1] = float("nan")
    out = quantizer(z)
    assert in_range(out.codes, quantizer)
    assert torch.isfinite(out.quantized[0]).all() and torch.equal(quantizer.encode(z), out.codes)
    stage = quantizer.stage if isinstance(quantizer, ResidualFSQ) else quantizer
    middle = stage.level_indices_to_codes(stage._half_width)
    assert bool((out.codes[1] == middle).all())
    quantizer.train()(z)  # and no error in training either (loss / gradients are NaN)


@pytest.mark.parametrize("name", ["fsq", "rfsq", "lfq", "bsq", "binary", "split-rvq"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_reaches_fp32_projections(name: str, dtype: torch.dtype) -> None:
    """A bf16 / fp16 input in front of an fp32 projection used to fail with a dtype error in
    the FSQ and lookup-free family (the VQ family always accepted it)."""
    quantizer = make(name).eval()
    z = sample(name, quantizer).to(dtype)
    out = quantizer(z)
    assert out.quantized.dtype == dtype
    assert torch.equal(out.codes, quantizer(z.float()).codes)
    assert torch.equal(quantizer.decode(out.codes).to(dtype), out.quantized)
    z.requires_grad_(True)
    quantizer.train()(z).quantized.float().square().sum().backward()
    assert z.grad is not None and z.grad.dtype == dtype


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_every_quantizer_in_a_bf16_model_keeps_fp32_math(name: str) -> None:
    """``model.to(torch.bfloat16)`` for inference: projections used to fail on mixed dtypes
    (the VQ family, then FSQ / ResidualFSQ's output projection); now they run in fp32, so the
    codes are those of the fp32 module with the same (rounded) weights."""
    reference = make(name).eval()
    reference.load_state_dict(
        {k: v.to(torch.bfloat16).float() for k, v in reference.state_dict().items()}
    )
    half = make(name).eval().to(torch.bfloat16)
    half.load_state_dict(reference.state_dict())
    z = sample(name, reference).to(torch.bfloat16)
    with torch.no_grad():
        out = half(z)
        expected = reference(z.float())
        decoded = half.decode(half.encode(z))
    assert out.quantized.dtype == torch.bfloat16
    assert torch.equal(out.codes, expected.codes)
    assert torch.equal(decoded.to(torch.bfloat16), out.quantized)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_training_step_in_a_bf16_model_keeps_fp32_statistics(name: str) -> None:
    """A training step of a module cast to bf16 failed in every EMA quantizer (bf16 EMA
    buffers lerped with fp32 counts); the running statistics now stay fp32 through the cast
    and the step runs, forward and backward."""
    quantizer = make(name).train().to(torch.bfloat16)
    fp32_names = [n for m in quantizer.modules() for n in getattr(m, "fp32_buffers", ())]
    if name.startswith(("vq", "rvq", "grvq", "split", "simvq", "multiscale")):
        assert fp32_names, "an EMA quantizer declares its statistics"
    for module in quantizer.modules():
        for buffer_name in getattr(module, "fp32_buffers", ()):
            buffer = module._buffers.get(buffer_name)
            assert buffer is None or buffer.dtype == torch.float32, buffer_name
    z = sample(name, quantizer).to(torch.bfloat16).requires_grad_(True)
    out = quantizer(z)
    (out.quantized.float().square().sum() + out.loss.float()).backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad.float()).all())
    for module in quantizer.modules():
        for buffer_name in getattr(module, "fp32_buffers", ()):
            buffer = module._buffers.get(buffer_name)
            assert buffer is None or buffer.dtype == torch.float32, buffer_name


def test_codes_of_codebooks_beyond_2_to_the_53_decode() -> None:
    """``check_codes`` compared in float64, which rounds ``2^62 - 1`` up to ``2^62``: the
    largest valid code of an LFQ (or FSQ) codebook above 2^53 was refused as out of range."""
    lfq = LFQ(codebook_size=2**62).eval()
    z = torch.ones(1, 62)
    codes = lfq.encode(z)
    assert int(codes.max()) == 2**62 - 1
    assert torch.equal(lfq.decode(codes), lfq(z).quantized)
    fsq = FSQ([3] * 38).eval()
    top = torch.full((1, 38), 1.0)
    assert int(fsq.encode(top)) == 3**38 - 1
    assert torch.equal(fsq.decode(fsq.encode(top)), fsq(top).quantized)
    with pytest.raises(ValueError, match="codes out of range"):
        fsq.decode(torch.tensor([[3**38]]))


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda: FSQ([3, 3], dim=0), "FSQ: dim must be >= 1, got 0"),
        (lambda: ResidualFSQ([3, 3], 2, dim=-1), "ResidualFSQ: dim must be >= 1, got -1"),
        (lambda: LFQ(dim=4, num_codebooks=0), "LFQ: num_codebooks must be >= 1, got 0"),
        (lambda: SimVQ(4, 16, frozen_codebook_dim=0), "SimVQ: frozen_codebook_dim must be >= 1"),
    ],
)
def test_bad_sizes_are_named(make_bad: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_bad()


def test_kmeans_init_waits_for_a_batch_with_vectors() -> None:
    """An empty first training batch made every centroid and count zero, and the next EMA
    update divided 0 by 0: a NaN codebook for good."""
    torch.manual_seed(0)
    vq = VectorQuantize(DIM, 16, kmeans_init=True, threshold_ema_dead_code=1.0).train()
    vq(torch.randn(0, DIM))
    assert not bool(vq.initted) and torch.isfinite(vq.embedding).all()
    z = torch.randn(64, DIM)
    vq(z)
    assert bool(vq.initted) and torch.isfinite(vq.embedding).all()
    rvq = ResidualVQ(DIM, 2, 16, kmeans_init=True).train()
    rvq(torch.randn(2, 0, DIM))
    rvq(torch.randn(2, 32, DIM))
    assert all(torch.isfinite(layer.embedding).all() for layer in rvq.layers)


@pytest.mark.parametrize("name", ["rvq", "grvq", "split-rvq"])
def test_residual_decode_reads_minus_one_as_a_level_not_run(name: str) -> None:
    """``forward`` marks levels it did not run with -1; ``decode`` rejected its own codes
    (``ResidualFSQ`` and vector-quantize-pytorch accept them)."""
    quantizer = make(name).eval()
    z = sample(name, quantizer)
    with torch.no_grad():
        out = quantizer(z, n_levels=quantizer.num_quantizers - 1)
    assert bool((out.codes == -1).any())
    assert torch.equal(quantizer.decode(out.codes), out.quantized)
    if name == "rvq":
        assert torch.equal(quantizer.decode(out.codes[..., :2]), out.quantized)
    with pytest.raises(ValueError, match="out of range"):
        quantizer.decode(torch.full_like(out.codes, -2))


# --------------------------------------------------------------------------- parity: VQ


def copy_vq(ours: VectorQuantize, reference: torch.nn.Module) -> None:
    ours.set_codebook_(reference._codebook.embed[0].detach())
    if ours.has_projections:
        ours.project_in.load_state_dict(reference.project_in.state_dict())
        ours.project_out.load_state_dict(reference.project_out.state_dict())


@pytest.mark.parametrize("use_cosine_sim", [False, True], ids=["euclidean", "cosine"])
def test_vq_with_projections_matches_vector_quantize_pytorch(use_cosine_sim: bool) -> None:
    torch.manual_seed(0)
    reference = vqp.VectorQuantize(
        dim=16, codebook_size=64, codebook_dim=4, use_cosine_sim=use_cosine_sim
    ).eval()
    ours = VectorQuantize(16, 64, codebook_dim=4, use_cosine_sim=use_cosine_sim).eval()
    copy_vq(ours, reference)
    z = torch.randn(3, 40, 16)
    with torch.no_grad():
        expected, indices, _ = reference(z)
        out = ours(z)
    assert torch.equal(out.codes[..., 0], indices)
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)


@classic_ema_oracle
@pytest.mark.parametrize("use_cosine_sim", [False, True], ids=["euclidean", "cosine"])
def test_vq_ema_training_matches_vector_quantize_pytorch(use_cosine_sim: bool) -> None:
    """Three EMA training steps: the same codes, output, commitment loss and codebook."""
    torch.manual_seed(0)
    reference = vqp.VectorQuantize(dim=16, codebook_size=32, use_cosine_sim=use_cosine_sim)
    ours = VectorQuantize(16, 32, use_cosine_sim=use_cosine_sim)
    copy_vq(ours, reference)
    reference.train(), ours.train()
    for _ in range(3):
        z = torch.randn(4, 50, 16)
        expected, indices, loss = reference(z)
        out = ours(z)
        assert torch.equal(out.codes[..., 0], indices)
        torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.loss, loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.embedding, reference._codebook.embed[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.ema_cluster_size, reference._codebook.cluster_size[0])


def test_vq_ema_training_matches_encodec() -> None:
    """A second oracle for the classic EMA update, pinned exactly (encodec 0.1.1): three
    training steps from a mid-training state give EnCodec's codes, output, loss and EMA
    statistics (decay 0.99, no dead-code expiry: EnCodec's resets only the codes)."""
    core_vq = pytest.importorskip("encodec.quantization.core_vq")
    torch.manual_seed(0)
    ours = VectorQuantize(16, 32, decay=0.99, threshold_ema_dead_code=0.0).train()
    with torch.no_grad():  # statistics of a codebook that has trained a while
        ours.ema_cluster_size.uniform_(0.0, 6.0)
        ours.ema_embedding_sum.copy_(ours.embedding * ours.ema_cluster_size[:, None])
    reference = core_vq.VectorQuantization(16, 32, kmeans_init=False, threshold_ema_dead_code=0)
    book = reference._codebook
    book.embed.copy_(ours.embedding), book.embed_avg.copy_(ours.ema_embedding_sum)
    book.cluster_size.copy_(ours.ema_cluster_size)
    reference.train()
    for _ in range(3):
        z = torch.randn(4, 50, 16)
        expected, indices, loss = reference(z.transpose(1, 2))
        out = ours(z)
        assert torch.equal(out.codes[..., 0], indices)
        torch.testing.assert_close(out.quantized, expected.transpose(1, 2), rtol=0, atol=1e-6)
        torch.testing.assert_close(out.loss, loss[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.ema_cluster_size, book.cluster_size)
        torch.testing.assert_close(ours.ema_embedding_sum, book.embed_avg, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.embedding, book.embed, rtol=1e-5, atol=1e-6)


def rvq_pair(**kwargs) -> tuple[torch.nn.Module, ResidualVQ]:
    """vector-quantize-pytorch's ResidualVQ (dim 16, 3 levels of 32 codes) and ours with the
    same codebooks."""
    torch.manual_seed(0)
    reference = vqp.ResidualVQ(dim=16, num_quantizers=3, codebook_size=32, **kwargs)
    ours = ResidualVQ(16, 3, 32, **kwargs)
    for level, layer in enumerate(reference.layers):  # shared: every level is the one codebook
        copy_vq(ours.stage(level), layer)
    return reference, ours


@classic_ema_oracle
def test_rvq_ema_training_matches_vector_quantize_pytorch() -> None:
    """Values (not gradients, a documented difference) of RVQ training steps."""
    reference, ours = rvq_pair()
    reference.train(), ours.train()
    for _ in range(3):
        z = torch.randn(4, 50, 16)
        expected, indices, losses = reference(z)
        out = ours(z)
        assert torch.equal(out.codes, indices)
        torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.loss, losses.sum(), rtol=1e-5, atol=1e-6)
        for level, layer in enumerate(reference.layers):
            torch.testing.assert_close(
                ours.stage(level).embedding, layer._codebook.embed[0], rtol=0, atol=1e-5
            )


@pytest.mark.parametrize(
    ("shared", "cosine"),
    [(True, False), (False, True), (True, True)],
    ids=["shared", "cos", "both"],
)
def test_rvq_shared_or_cosine_matches_vector_quantize_pytorch(shared: bool, cosine: bool) -> None:
    reference, ours = rvq_pair(shared_codebook=shared, use_cosine_sim=cosine)
    reference.eval(), ours.eval()
    z = torch.randn(4, 50, 16)
    with torch.no_grad():
        expected, indices, _ = reference(z)
        out = ours(z)
    assert torch.equal(out.codes, indices)
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.decode(out.codes), reference.get_output_from_indices(indices))


def test_rvq_decode_of_dropped_levels_matches_vector_quantize_pytorch() -> None:
    reference, ours = rvq_pair()
    reference.eval(), ours.eval()
    codes = torch.randint(0, 32, (2, 7, 3))
    codes[..., 2] = -1
    codes[0, :3, 1] = -1
    torch.testing.assert_close(
        ours.decode(codes), reference.get_output_from_indices(codes), rtol=0, atol=1e-6
    )


def test_grvq_matches_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    reference = vqp.GroupedResidualVQ(dim=16, groups=2, num_quantizers=3, codebook_size=32)
    ours = GroupedResidualVQ(16, 2, 3, 32).eval()
    reference.eval()
    for group in range(2):
        for level in range(3):
            copy_vq(ours.rvqs[group].stage(level), reference.rvqs[group].layers[level])
    z = torch.randn(4, 50, 16)
    with torch.no_grad():
        expected, indices, _ = reference(z)  # indices (groups, b, n, levels)
        out = ours(z)
    assert torch.equal(out.codes, rearrange(indices, "g b n l -> b n (g l)"))
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.decode(out.codes), reference.get_output_from_indices(indices))


def test_simvq_matches_vector_quantize_pytorch() -> None:
    """Codes, output, loss and gradients (rotation trick) in training; codes in eval (where
    our loss is zero by the contract)."""
    torch.manual_seed(0)
    reference = vqp.SimVQ(dim=16, codebook_size=64)
    ours = SimVQ(16, 64)
    ours.load_state_dict(reference.state_dict())
    z = torch.randn(4, 30, 16)
    z_ref, z_ours = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected, indices, loss = reference.train()(z_ref)
    out = ours.train()(z_ours)
    assert torch.equal(out.codes[..., 0], indices)
    torch.testing.assert_close(out.quantized, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, loss)
    (expected.square().sum() + loss).backward()
    (out.quantized.square().sum() + out.loss).backward()
    torch.testing.assert_close(z_ours.grad, z_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        ours.code_transform.weight.grad, reference.code_transform.weight.grad
    )
    with torch.no_grad():
        expected, indices, _ = reference.eval()(z)
        out = ours.eval()(z)
    assert torch.equal(out.codes[..., 0], indices)
    torch.testing.assert_close(ours.decode(out.codes), reference.indices_to_codes(indices))


# --------------------------------------------------------------------------- parity: gradients


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": [8, 5, 5, 5]},
        {"levels": [8, 5, 5, 5], "dim": 12},
        {"levels": [2, 4, 5], "preserve_symmetry": True},
    ],
)
def test_fsq_straight_through_gradient_matches_vector_quantize_pytorch(kwargs) -> None:
    torch.manual_seed(0)
    reference = vqp.FSQ(**kwargs).train()
    ours = FSQ(**kwargs).train()
    ours.load_state_dict(reference.state_dict())
    z = 2 * torch.randn(4, 50, ours.dim)
    z_ref, z_ours = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected, _ = reference(z_ref)
    out = ours(z_ours)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(z_ours.grad, z_ref.grad, rtol=1e-6, atol=1e-7)


def test_residual_fsq_gradient_matches_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    reference = vqp.ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16).train()
    ours = ResidualFSQ([8, 5, 5, 5], 3, dim=16).train()
    ours.load_state_dict(reference.state_dict())
    z = torch.randn(4, 50, 16)
    z_ref, z_ours = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected, indices = reference(z_ref)
    out = ours(z_ours)
    assert torch.equal(out.codes, indices.long())
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(z_ours.grad, z_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.project_in.weight.grad, reference.project_in.weight.grad)


def test_lfq_gradients_match_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    reference = vqp.LFQ(
        codebook_size=2**6, dim=12, entropy_loss_weight=0.1, commitment_loss_weight=0.25
    ).train()
    ours = LFQ(codebook_size=2**6, dim=12, entropy_group_size=None).train()
    ours.load_state_dict(reference.state_dict(), strict=False)  # vqp saves its bit mask
    z = torch.randn(4, 50, 12)
    z_ref, z_ours = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected, _, loss = reference(z_ref)
    out = ours(z_ours)
    weights = torch.randn_like(expected)
    ((expected * weights).sum() + loss).backward()
    ((out.quantized * weights).sum() + out.loss).backward()
    torch.testing.assert_close(z_ours.grad, z_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        ours.project_in.weight.grad, reference.project_in.weight.grad, rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------------------------- review fixes


def test_multiscale_codebook_update_pairs_each_vector_with_its_code() -> None:
    """The EMA update got scale-major vectors with batch-major codes: with a batch of 4 only
    24% of the pairs matched (a batch of 1 hid it)."""
    torch.manual_seed(0)
    quantizer = MultiScaleResidualVQ(8, 64, scales=(1, 2, 4), refine_convs=0, decay=0.0).train()
    vq = quantizer.quantizer
    agree: list[float] = []
    update = vq.update_codebook_

    def spy(x: torch.Tensor, indices: torch.Tensor):
        agree.append(float((vq.search(x) == indices).float().mean()))  # before the update
        return update(x, indices)

    vq.update_codebook_ = spy  # type: ignore[method-assign]
    quantizer(torch.randn(4, 4, 4, 8))
    assert agree == [1.0]


def test_simvq_keeps_its_codebook_in_fp32_in_a_bf16_model() -> None:
    """``W @ frozen`` ran in bf16 and the frozen codes were rounded for good by ``.to``."""
    torch.manual_seed(0)
    model = SimVQ(16, 64, rotation_trick=False).eval()
    frozen = model.frozen_codebook.clone()
    half = SimVQ(16, 64, rotation_trick=False)
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16).eval()
    assert half.frozen_codebook.dtype == torch.float32 and torch.equal(half.frozen_codebook, frozen)
    codes = half.encode(torch.randn(256, 16).bfloat16())
    assert half.decode(codes).dtype == torch.float32
    reference = SimVQ(16, 64, rotation_trick=False)
    reference.load_state_dict(model.state_dict())
    reference.code_transform.weight.data = half.code_transform.weight.float()
    assert torch.equal(half.codebook, reference.codebook)


def test_out_of_range_codes_name_the_level_and_values() -> None:
    with pytest.raises(ValueError, match=r"level 0: 0\.\.99 outside \[0, 15\]"):
        VectorQuantize(DIM, 16).decode(torch.tensor([[0], [99]]))
    rvq = ResidualVQ(DIM, 3, [16, 16, 4]).eval()
    with pytest.raises(ValueError, match=r"level 2: 7\.\.7 outside \[-1, 3\]"):
        rvq.decode(torch.tensor([[2, 3, 7]]))
    grouped = GroupedResidualVQ(DIM, 2, 2, 16).eval()
    with pytest.raises(ValueError, match=r"GroupedResidualVQ.decode: .*got \(2, 6\)"):
        grouped.decode(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"GroupedResidualVQ.decode: codes out of range \(level 3"):
        grouped.decode(torch.tensor([[0, 0, 0, 16]]))


@pytest.mark.parametrize("name", list(MAKERS))
def test_codes_in_on_disk_integer_dtypes_decode_as_int64(name: str) -> None:
    """Codes are stored in the smallest unsigned type that holds the codebook; ``decode``
    failed on uint16 / uint32 (``"min_all" not implemented for 'UInt16'``)."""
    quantizer = make(name).eval()
    with torch.no_grad():
        codes = quantizer.encode(sample(name, quantizer))
        expected = quantizer.decode(codes)
        dtypes = [torch.uint16, torch.uint32, torch.int32, torch.int16, torch.uint8]
        for dtype in dtypes:
            if max(quantizer.codebook_sizes) - 1 > torch.iinfo(dtype).max:
                continue
            assert torch.equal(quantizer.decode(codes.to(dtype)), expected), dtype


def test_out_of_range_unsigned_codes_are_still_refused() -> None:
    vq = VectorQuantize(DIM, 16).eval()
    with pytest.raises(ValueError, match=r"codes out of range \(level 0: 0\.\.16"):
        vq.decode(torch.tensor([[0], [16]], dtype=torch.uint16))
    rvq = ResidualVQ(DIM, 2, 16).eval()
    with pytest.raises(ValueError, match="level 1: 40..40 outside"):
        rvq.decode(torch.tensor([[3, 40]], dtype=torch.uint32))


@pytest.mark.parametrize(
    ("make_bad", "start", "names", "not_names"),
    [
        (
            lambda: BinaryQuantizer(dim=DIM, bits=128, bits_per_code=64),
            "BinaryQuantizer: bits_per_code=64 ",
            ["smaller bits_per_code"],
            ["num_codebooks", "use BinaryQuantizer"],
        ),
        (
            lambda: LFQ(codebook_size=2**64),
            "LFQ: codebook_size=2**64 ",
            ["num_codebooks"],
            [],
        ),
        (
            lambda: LFQ(dim=64, num_codebooks=2),
            "LFQ: dim=64 without codebook_size ",
            ["give codebook_size"],
            [],
        ),
        (lambda: BSQ(dim=DIM, codebook_dim=63), "BSQ: codebook_dim=63 ", ["num_codebooks"], []),
        (
            lambda: GroupLFQ(dim=DIM, codebook_dim=128, num_groups=2),
            "GroupLFQ: codebook_dim=128 in num_groups=2 ",
            ["num_groups"],
            ["num_codebooks"],
        ),
        (
            lambda: GroupedResidualVQ(8, 2, 0, 16),
            "GroupedResidualVQ: num_quantizers must be >= 1, got 0",
            [],
            [],
        ),
        (
            lambda: GroupedResidualVQ(
                8, 2, 2, 16, quantize_dropout=True, quantize_dropout_cutoff_index=5
            ),
            "GroupedResidualVQ: quantize_dropout_cutoff_index must be in [0, num_quantizers), "
            "got 5 with num_quantizers=2",
            [],
            [],
        ),
        (
            lambda: GroupedResidualVQ(8, 2, 2, [16]),
            "GroupedResidualVQ: codebook_size has 1 entries for num_quantizers=2",
            [],
            [],
        ),
        (
            lambda: ResidualVQ(8, 2, 16, quantize_dropout_cutoff_index=2),
            "ResidualVQ: quantize_dropout_cutoff_index must be in [0, num_quantizers), "
            "got 2 with num_quantizers=2",
            [],
            [],
        ),
    ],
)
def test_construction_errors_name_the_class_and_its_argument(
    make_bad: Callable[[], object], start: str, names: list[str], not_names: list[str]
) -> None:
    """Each class names itself and the argument the caller passed: BinaryQuantizer was told to
    split bits over num_codebooks (or to use BinaryQuantizer), GroupedResidualVQ's errors
    named ResidualVQ."""
    with pytest.raises(ValueError) as error:
        make_bad()
    message = str(error.value)
    assert message.startswith(start), message
    assert all(name in message for name in names), message
    assert not any(name in message for name in not_names), message
