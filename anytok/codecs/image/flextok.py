"""FlexTok: images as ordered 1D token sequences of flexible length (1 ... K tokens).

Bachmann et al. 2025, "FlexTok: Resampling Images into 1D Token Sequences of Flexible
Length", https://arxiv.org/abs/2502.13967 (ICML 2025; code https://github.com/apple/ml-flextok).

* **Encoder**: a ViT over image patches with ``K`` learned *register tokens* appended. A
  block-causal attention mask lets patches attend to patches, and register ``i`` attend to
  every patch and to registers ``<= i``: register ``i`` cannot depend on later ones, so a
  prefix of the sequence is a self-contained description of the image.
* **Bottleneck**: FSQ on the registers (FlexTok: 6 channels, levels ``[8, 8, 8, 5, 5, 5]``,
  64,000 codes), one token per register. Any quantizer of :mod:`anytok.quantizers` plugs in
  by name.
* **Nested dropout** (Rippel et al. 2014, https://arxiv.org/abs/1402.0915): in training each
  image keeps a random prefix of its registers, with lengths drawn from ``{1, 2, 4, ..., K}``
  (FlexTok's power-of-two schedule; ``"uniform"`` draws from ``1..K``); the decoder sees the
  rest masked. Early tokens must carry what matters most: a coarse-to-fine order.
* **Decoder**: a rectified-flow transformer (:class:`anytok.decoders.diffusion.FlowDecoder`)
  over image patches, conditioned on the kept register embeddings in context (FlexTok's
  design) or by cross-attention, with timestep adaLN-Zero and an optional REPA loss. It
  generates a plausible image from any prefix length; more tokens pin it down further.

FlexTok encodes the 32x32x16 latent of a separately trained VAE with 2x2 patches (256 patches
of 16x16 pixels at 256x256). Here the encoder and the flow decoder work on 16x16 pixel patches
directly (the same grid, and one model to train and ship); the decoder's sampler, step count,
guidance and seed are decode-time choices.

``encode(images) -> codes (b, levels, K)`` with layout ``("sequence",)``; ``encode(...,
num_tokens=k)`` returns the first ``k`` (identical to truncating: registers are causal).
``decode`` takes any prefix ``(b, levels, k)``, ``1 <= k <= K``, or :class:`Tokens` whose
``lengths`` give per-image prefix lengths.

Axis legend: ``b`` batch, ``n`` patches, ``K`` registers, ``d`` channels, ``p`` patch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from anytok.codecs.adaptive_length import (
    PREFIX_DISTRIBUTIONS,
    prefix_mask,
    sample_prefix_lengths,
)
from anytok.codecs.base import (
    ImageTokenizer,
    TokenizerOutput,
    build_quantizer,
    to_tokens,
)
from anytok.decoders.diffusion import FlowDecoder, checked_scheduler
from anytok.nn.transformer import (
    Transformer,
    init_weights,
    patchify,
    sincos_grid_embedding,
    unpatchify,
)
from anytok.registry import register
from anytok.regularizers import TrainingOptions, freeze
from anytok.tokens import Tokens, TokenSpec, as_int


class RegisterEncoder(nn.Module):
    """ViT over ``p x p`` patches with ``num_registers`` learned registers appended:
    ``image (b, 3, H, W) -> registers (b, K, dim)``.

    Patches get fixed sine-cosine grid positions (so any multiple of ``p`` encodes); each
    register is its own learned vector. Attention is block-causal (see :meth:`attention_mask`).
    """

    def __init__(
        self,
        patch_size: int,
        num_registers: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_registers = num_registers
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, dim)
        self.registers = nn.Parameter(torch.empty(num_registers, dim))
        self.transformer = Transformer(
            dim, depth, heads, mlp_ratio, gradient_checkpointing=gradient_checkpointing
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.registers, std=0.02)

    def attention_mask(self, num_patches: int, device: torch.device) -> Tensor:
        """Boolean ``(1, n + K, n + K)``, True = attend: patches see patches; register ``i``
        sees every patch and registers ``0 .. i``."""
        n, k = num_patches, self.num_registers
        mask = torch.zeros(n + k, n + k, dtype=torch.bool, device=device)
        mask[:, :n] = True
        mask[n:, n:] = torch.ones(k, k, dtype=torch.bool, device=device).tril()
        return mask[None]

    def forward(
        self,
        image: Tensor,
        return_hidden: tuple[int, ...] = (),
        num_registers: int | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """``image (b, 3, H, W)`` -> registers ``(b, k, dim)`` and the patch features
        ``(b, n, dim)`` of the blocks in ``return_hidden``.

        ``num_registers=k`` runs only the first ``k`` registers (default all ``K``): the same
        values as the first ``k`` of a full run, since no register sees a later one.
        """
        p = self.patch_size
        grid = (image.shape[-2] // p, image.shape[-1] // p)
        patches = self.patch_embed(patchify(image, (p, p)))
        patches = patches + sincos_grid_embedding(grid, patches.shape[-1], patches.device).to(
            patches.dtype
        )
        k = self.num_registers if num_registers is None else num_registers
        registers = self.registers[:k].to(patches.dtype).expand(image.shape[0], -1, -1)
        n = patches.shape[1]
        x = torch.cat([patches, registers], dim=1)
        mask = self.attention_mask(n, x.device)[:, : n + k, : n + k]
        if return_hidden:
            x, hidden = self.transformer(x, attn_mask=mask, return_hidden=return_hidden)
            return x[:, n:], [h[:, :n] for h in hidden]
        return self.transformer(x, attn_mask=mask)[:, n:], []


class FlexTok(ImageTokenizer):
    """FlexTok: images ``(b, 3, H, W)`` -> ``K`` ordered tokens ``(b, levels, K)`` and back
    from any prefix.

    Args:
        resolution: ``(H, W)`` decoded by default (inputs of another size are resized to cover
            it and centre-cropped: ``resize="cover_crop"``); any multiple of ``patch_size``
            encodes.
        patch_size: pixels per patch side (16: a 16x16 grid at 256x256, FlexTok's).
        num_registers: ``K``, the longest token sequence.
        encoder_dim, encoder_depth, encoder_heads: encoder ViT width, blocks, heads.
        decoder_dim, decoder_depth, decoder_heads: flow decoder width, blocks, heads.
        mlp_ratio: MLP width / model width in both.
        quantizer: ``{"name": ..., **kwargs}``; default FSQ ``[8, 8, 8, 5, 5, 5]``.
        nested_dropout: ``"pow2"`` (kept lengths ``1, 2, 4 ... K``), ``"uniform"`` (``1..K``)
            or ``None`` (off: a fixed-length 1D tokenizer).
        conditioning: ``"in_context"`` (registers join the patch sequence: FlexTok) or
            ``"cross"`` (cross-attention to the registers).
        cond_dropout: training-time drop of the whole condition, for classifier-free guidance.
        objective: the flow decoder's objective (``"flow"``, ``"epsilon"``, ``"v"``).
        time_shift: SD3-style timestep shift of training and sampling times (a flow option);
            ``None``: 3.0 under ``objective="flow"``, 1.0 under ``"epsilon"`` / ``"v"``.
        sample_steps, guidance_scale, scheduler, sample_seed: decoding defaults (see
            :meth:`decode`); the fixed seed makes evaluation decodes deterministic.
            ``scheduler=None`` picks the objective's (``"euler"`` for flow, ``"ddim"`` for
            epsilon / v); one that cannot sample the objective is refused.
        repa: REPA alignment of decoder features to a frozen vision model,
            ``{"teacher": path, "weight": float, "layer": int}`` (FlexTok uses DINOv2-L).
        semantic_teacher, semantic_weight, latent_perturbation: the seed papers' training
            options (:class:`anytok.regularizers.TrainingOptions`): align the encoder's patch
            features to a frozen local vision model (loss ``"semantic"``); replace a fraction
            of the tokens the decoder sees by uniformly random codes in training (after
            "Robust Latent Matters", https://arxiv.org/abs/2503.08354).
        perturbation_neighbours, perturbation_items: RobusTok-style perturbation
            (:class:`anytok.regularizers.TrainingOptions`): replace a code by one of its
            ``delta`` nearest codebook neighbours (single-level codebooks of at most 16384
            codes), in a ``beta`` fraction of the images.
        semantic_layer: encoder block whose patch features are aligned (default: the middle).
        train_decoder_only: freeze the encoder and quantizer (decoder post-training, "Image
            Tokenizer Needs Post-Training", https://arxiv.org/abs/2509.12474).
        gradient_checkpointing: recompute transformer activations in backward.
    """

    resize = "cover_crop"

    def __init__(
        self,
        resolution: tuple[int, int] | list[int] = (256, 256),
        patch_size: int = 16,
        num_registers: int = 256,
        encoder_dim: int = 1152,
        encoder_depth: int = 18,
        encoder_heads: int = 18,
        decoder_dim: int = 1792,
        decoder_depth: int = 28,
        decoder_heads: int = 28,
        mlp_ratio: float = 4.0,
        quantizer: dict[str, Any] | None = None,
        nested_dropout: str | None = "pow2",
        conditioning: str = "in_context",
        cond_dropout: float = 0.1,
        objective: str = "flow",
        time_shift: float | None = None,
        sample_steps: int = 25,
        guidance_scale: float = 1.0,
        scheduler: str | None = None,
        sample_seed: int = 0,
        repa: dict[str, Any] | None = None,
        semantic_teacher: str | None = None,
        semantic_weight: float = 0.5,
        semantic_layer: int | None = None,
        latent_perturbation: float = 0.0,
        perturbation_neighbours: int = 0,
        perturbation_items: float = 1.0,
        train_decoder_only: bool = False,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        name = type(self).__name__
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if patch_size < 1 or self.resolution[0] % patch_size or self.resolution[1] % patch_size:
            raise ValueError(
                f"{name}: resolution {self.resolution} must be a multiple of patch_size "
                f"{patch_size}"
            )
        if num_registers < 1:
            raise ValueError(f"{name}: num_registers must be >= 1, got {num_registers}")
        if nested_dropout is not None and nested_dropout not in PREFIX_DISTRIBUTIONS:
            raise ValueError(
                f"{name}: nested_dropout must be one of {PREFIX_DISTRIBUTIONS} or None, "
                f"got {nested_dropout!r}"
            )
        if time_shift is None:
            # SD3's resolution shift (https://arxiv.org/abs/2403.03206): 256x256 pixels hold
            # ~12x the values of the 32x32x16 latents FlexTok denoises, sqrt(12) ~ 3. DDPM
            # objectives train on uniform timesteps: no shift.
            time_shift = 3.0 if objective == "flow" else 1.0
        scheduler = checked_scheduler(f"{name}: scheduler", objective, scheduler, time_shift)
        if sample_steps < 1:
            raise ValueError(f"{name}: sample_steps must be >= 1, got {sample_steps}")
        if semantic_layer is not None and not 0 <= semantic_layer < encoder_depth:
            raise ValueError(
                f"{name}: semantic_layer must index an encoder block in [0, {encoder_depth}), "
                f"got {semantic_layer}"
            )
        quantizer = quantizer or {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
        self.patch_size = self.downsample_factor = int(patch_size)
        self.num_registers = int(num_registers)
        self.nested_dropout = nested_dropout
        self.sample_steps = int(sample_steps)
        self.guidance_scale = float(guidance_scale)
        self.scheduler = scheduler
        self.sample_seed = int(sample_seed)
        self.train_decoder_only = bool(train_decoder_only)

        self.encoder = RegisterEncoder(
            patch_size,
            num_registers,
            encoder_dim,
            encoder_depth,
            encoder_heads,
            mlp_ratio,
            gradient_checkpointing,
        )
        self.quantizer = build_quantizer(quantizer, encoder_dim)
        # Which register each token is: cross-attention sees the tokens as a set, and equal
        # codes at different registers mean different things (in context the decoder also
        # adds index positions of its own).
        self.register_positions = nn.Parameter(torch.empty(num_registers, encoder_dim))
        nn.init.trunc_normal_(self.register_positions, std=0.02)
        self.decoder = FlowDecoder(
            target_dim=3 * patch_size * patch_size,
            cond_dim=encoder_dim,
            dim=decoder_dim,
            depth=decoder_depth,
            heads=decoder_heads,
            mlp_ratio=mlp_ratio,
            conditioning=conditioning,
            cond_dropout=cond_dropout,
            objective=objective,
            time_shift=time_shift,
            repa=repa,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.options = TrainingOptions(
            encoder_dim,
            semantic_teacher,
            semantic_weight,
            latent_perturbation,
            modality="image",
            perturbation_neighbours=perturbation_neighbours,
            perturbation_items=perturbation_items,
        )
        self.semantic_layer = encoder_depth // 2 if semantic_layer is None else semantic_layer
        if self.train_decoder_only:
            freeze(self.encoder, self.quantizer)

    # ------------------------------------------------------------------ description

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(
            modality="image",
            codebook_sizes=tuple(self.quantizer.codebook_sizes),
            layout=("sequence",),
            resolution=self.resolution,
            name=self.registry_name,
            architecture=self.architecture,
            resize=self.resize,
        )

    @property
    def num_tokens(self) -> int:
        """Tokens per image at full length (``K``, the number of registers)."""
        return self.num_registers

    def train(self, mode: bool = True) -> FlexTok:
        """As ``nn.Module.train``; with ``train_decoder_only`` the encoder and quantizer stay in
        eval mode."""
        super().train(mode)
        if self.train_decoder_only:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    # ------------------------------------------------------------------ pieces

    def _registers(
        self, image: Tensor, hidden: tuple[int, ...] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        if self.train_decoder_only:
            with torch.no_grad():
                return self.encoder(image, hidden)
        return self.encoder(image, hidden)

    def _condition(self, quantized: Tensor) -> Tensor:
        """Quantized registers ``(b, k, d)`` (a prefix) -> decoder condition ``(b, k, d)``."""
        k = quantized.shape[1]
        return quantized + self.register_positions[:k].to(quantized.dtype)

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    @contextlib.contextmanager
    def _eval_randomness(self, device: torch.device) -> Iterator[None]:
        """Outside training, run under a forked RNG seeded with ``sample_seed`` so evaluation
        losses and reconstructions are repeatable; in training, use the global RNG."""
        if self.training:
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.sample_seed)
            yield

    # ------------------------------------------------------------------ contract

    def forward(self, image: Tensor, lengths: Tensor | None = None) -> TokenizerOutput:
        """Training pass: ``image (b, 3, H, W)`` -> the flow decoder's one-step estimate of the
        image (at a random time), tokens ``(b, levels, K)`` and losses ``diffusion`` (flow
        matching, + REPA in training), ``quantizer``, and ``semantic`` with a teacher; metrics
        include the quantizer's and ``diffusion/repa``."""
        image = self.check_input(image)
        b = image.shape[0]
        wants_semantic = self.options.semantic is not None and self.training
        registers, hidden = self._registers(image, (self.semantic_layer,) if wants_semantic else ())
        out = self.quantizer(registers)
        codes = out.codes.movedim(-1, 1)  # (b, levels, K)
        quantized = out.quantized.detach() if self.train_decoder_only else out.quantized
        quantized = self.options.perturb(self.quantizer, quantized.movedim(-1, 1), codes)
        quantized = quantized.movedim(1, -1)
        with self._eval_randomness(image.device):
            cond_mask = None
            if self.training and self.nested_dropout is not None:
                kept = sample_prefix_lengths(
                    b, self.num_registers, distribution=self.nested_dropout
                )
                cond_mask = prefix_mask(kept.to(image.device), self.num_registers)
            grid = self._grid(*image.shape[-2:])
            flow = self.decoder.loss(
                patchify(image, (self.patch_size, self.patch_size)),
                self._condition(quantized),
                cond_mask=cond_mask,
                grid=grid,
                repa_input=image if self.training and self.decoder.repa is not None else None,
            )
        losses = {"diffusion": flow.loss, "quantizer": out.loss}
        if wants_semantic:
            losses.update(self.options.losses(hidden[0], grid, image))
        return TokenizerOutput(
            reconstruction=unpatchify(flow.denoised, grid, (self.patch_size, self.patch_size)),
            tokens=to_tokens(codes, self.spec, None),
            losses=losses,
            metrics={**out.metrics, **flow.metrics},
            latent=registers.movedim(-1, 1),
        )

    def encode(
        self, image: Tensor, lengths: Tensor | None = None, *, num_tokens: int | None = None
    ) -> Tokens:
        """``image (b, 3, H, W)`` in [-1, 1] -> codes ``(b, levels, num_tokens or K)``.

        The first ``k`` tokens do not depend on the later ones, so ``num_tokens=k`` equals
        truncating the full sequence.
        """
        image = self.check_input(image)
        k = (
            self.num_registers
            if num_tokens is None
            else as_int(num_tokens, f"{type(self).__name__}.encode: num_tokens")
        )
        if not 1 <= k <= self.num_registers:
            raise ValueError(
                f"{type(self).__name__}.encode: num_tokens must be in [1, {self.num_registers}], "
                f"got {num_tokens}"
            )
        registers, _ = self.encoder(image, num_registers=k)
        codes = self.quantizer.encode(registers).movedim(-1, 1)
        return to_tokens(codes, self.spec, None)

    def decode(
        self,
        tokens: Tokens | Tensor,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """A prefix of ``k`` tokens ``(b, levels, k)``, ``1 <= k <= K`` -> images
        ``(b, 3, H, W)`` sampled by the flow decoder, clamped to [-1, 1].

        :class:`Tokens` with ``lengths`` decode image ``i`` from its first ``lengths[i]``
        tokens. Keywords default to the constructor's ``sample_steps``, ``guidance_scale``,
        ``scheduler`` and ``sample_seed`` (same seed: same image; the noise does not depend on
        ``k``); ``size`` defaults to ``resolution``.
        """
        name = f"{type(self).__name__}.decode"
        codes = self.codes_of(tokens)
        levels = len(self.quantizer.codebook_sizes)
        if codes.ndim != 3 or codes.shape[1] != levels:
            raise ValueError(
                f"{name}: expected codes (batch, {levels}, k), got shape {tuple(codes.shape)}"
            )
        k = codes.shape[-1]
        if not 1 <= k <= self.num_registers:
            raise ValueError(
                f"{name}: a prefix of 1 to {self.num_registers} tokens decodes, got {k} tokens"
            )
        height, width = self.resolution if size is None else (int(size[0]), int(size[1]))
        if height % self.patch_size or width % self.patch_size or min(height, width) <= 0:
            raise ValueError(
                f"{name}: size {(height, width)} must be positive multiples of the patch size "
                f"{self.patch_size}"
            )
        cond_mask = None
        if isinstance(tokens, Tokens) and tokens.lengths is not None:
            lengths = tokens.lengths.to(codes.device)
            if bool((lengths < 1).any()):
                raise ValueError(f"{name}: every item needs at least one token, got {lengths}")
            cond_mask = prefix_mask(lengths, k)
        quantized = self.quantizer.decode(codes.movedim(1, -1))
        grid = self._grid(height, width)
        patches = self.decoder.sample(
            self._condition(quantized),
            grid=grid,
            cond_mask=cond_mask,
            steps=self.sample_steps if steps is None else steps,
            guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
            scheduler=self.scheduler if scheduler is None else scheduler,
            seed=self.sample_seed if seed is None else seed,
        )
        return unpatchify(patches, grid, (self.patch_size, self.patch_size)).clamp(-1.0, 1.0)


def _flextok_config(encoder_depth: int, decoder_depth: int) -> dict[str, Any]:
    """FlexTok's sizes: width ``64 * depth`` and 64-channel heads (d12: 768, d18: 1152,
    d28: 1792), 256 registers, FSQ ``[8, 8, 8, 5, 5, 5]``, 16x16 patches at 256x256."""
    return {
        "resolution": [256, 256],
        "patch_size": 16,
        "num_registers": 256,
        "encoder_dim": 64 * encoder_depth,
        "encoder_depth": encoder_depth,
        "encoder_heads": encoder_depth,
        "decoder_dim": 64 * decoder_depth,
        "decoder_depth": decoder_depth,
        "decoder_heads": decoder_depth,
        "mlp_ratio": 4.0,
        "quantizer": {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]},
        "nested_dropout": "pow2",
        "conditioning": "in_context",
        "cond_dropout": 0.1,
        "objective": "flow",
        # None: the objective's (flow: time_shift 3.0 and euler; epsilon / v: 1.0 and ddim)
        "time_shift": None,
        "sample_steps": 25,
        "guidance_scale": 1.0,
        "scheduler": None,
        "sample_seed": 0,
    }


_TINY = {
    "resolution": [32, 32],
    "patch_size": 8,
    "num_registers": 8,
    "encoder_dim": 32,
    "encoder_depth": 2,
    "encoder_heads": 2,
    "decoder_dim": 32,
    "decoder_depth": 2,
    "decoder_heads": 2,
    "quantizer": {"name": "fsq", "levels": [5, 5, 5]},
    "sample_steps": 4,
}

for _enc, _dec in ((18, 28), (12, 12)):
    register(
        f"flextok_d{_enc}_d{_dec}",
        modality="image",
        description=(
            f"FlexTok d{_enc}-d{_dec}: ViT + 256 causal registers, FSQ (64,000 codes), "
            "rectified-flow decoder; decodes from any prefix of 1-256 tokens"
        ),
        paper="https://arxiv.org/abs/2502.13967 (FlexTok)",
        default_config=_flextok_config(_enc, _dec),
        tiny_config=_TINY,
        builder=FlexTok,
    )
