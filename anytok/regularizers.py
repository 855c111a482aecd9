"""Training regularizers from the seed papers, used as tokenizer options.

* **Semantic regularization** (GigaTok https://arxiv.org/abs/2504.08736, VA-VAE / VTP /
  GloTok; REPA https://arxiv.org/abs/2410.06940 for diffusion decoders): align a model's
  features with a frozen vision (or speech) model's, through a small trainable projector.
  The frozen model is any local ``transformers`` checkpoint directory (``save_pretrained``
  output; a full CLIP / SigLIP checkpoint uses its vision tower) given by path: nothing is
  downloaded.
* **Latent perturbation** (after "Robust Latent Matters: Boosting Image Generation with
  Sampling Error Synthesis" and "Image Tokenizer Needs Post-Training" (RobusTok),
  https://arxiv.org/abs/2509.12474): train the decoder on tokens with some codes replaced,
  so it tolerates a generator's mistakes. By default a fixed fraction of positions in every
  item gets a uniformly random code (a simpler error model than the paper's). RobusTok's
  model replaces a code by one of its top-delta nearest codebook neighbours in a beta
  fraction of the images: ``perturbation_neighbours`` (delta) and ``perturbation_items``
  (beta) give that; the paper's annealing of the rate over training is not implemented.

The frozen model is held outside the module tree (``object.__setattr__``): it is never
saved in a tokenizer's ``state_dict``, never trained, and its weights load on first use
(building a model reads only the teacher's ``config.json``, for its width).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.media.audio import resample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenFeatureModel:
    """Patch features of a frozen local model: images ``(b, 3, H, W)`` in [-1, 1] ->
    ``(b, n, dim)`` on a grid ``(h, w)``; audio ``(b, 1, S)`` -> ``(b, n, dim)``, grid ``(n,)``.

    Args:
        path: a ``transformers`` checkpoint directory (``config.json`` + weights), e.g. a
            DINOv2 / SigLIP vision tower / CLIP vision model, or a wav2vec2 / HuBERT model.
        modality: ``"image"`` or ``"audio"``.
        sample_rate: audio input rate (resampled to the model's, from its
            ``preprocessor_config.json``, default 16 kHz). Where that file sets
            ``do_normalize`` (wav2vec2-large-lv60, WavLM-large ...), each item is then scaled
            to zero mean and unit variance over all its samples, as the model's processor does.
        image_size: the square side images are resized to (bicubic, whole image: no crop,
            so the grid stays aligned with the student's). None: the size the checkpoint's
            image processor feeds the model (``crop_size``, else a square ``size`` in
            ``preprocessor_config.json``: 224 for DINOv2 and CLIP, as REPA uses DINOv2),
            else the config's ``image_size`` (518 for DINOv2: 5x the tokens of 224).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        modality: str = "image",
        sample_rate: int = 16000,
        image_size: int | None = None,
    ):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"semantic teacher {self.path}: not a model directory (no config.json); give the "
                "path of a local transformers checkpoint (save_pretrained output)"
            )
        if modality not in ("image", "audio"):
            raise ValueError(
                f"FrozenFeatureModel: modality must be image or audio, got {modality!r}"
            )
        from transformers import AutoConfig

        try:  # the config alone: the weights load on first use (never at inference)
            model_config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except Exception as err:  # transformers raises many types for unreadable checkpoints
            raise OSError(f"semantic teacher {self.path}: cannot be loaded ({err})") from err
        self._model: nn.Module | None = None
        self.modality = modality
        self.input_rate = sample_rate
        processor: dict[str, Any] = {}
        if (self.path / "preprocessor_config.json").is_file():
            processor = json.loads((self.path / "preprocessor_config.json").read_text())
        config = getattr(model_config, "vision_config", model_config)
        self.dim = int(config.hidden_size)
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"semantic teacher image_size must be >= 1, got {image_size}")
        self.image_size = (
            image_size or _processor_image_size(processor) or getattr(config, "image_size", None)
        )
        self.patch_size = getattr(config, "patch_size", None)
        self.mean = torch.tensor(processor.get("image_mean", IMAGENET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.get("image_std", IMAGENET_STD)).view(1, 3, 1, 1)
        self.model_rate = int(processor.get("sampling_rate", 16000))
        # wav2vec2-large-lv60 / WavLM-large style models expect each item at zero mean and
        # unit variance (their processor's do_normalize); a missing flag means no scaling
        self.normalize_audio = bool(processor.get("do_normalize", False))

    @property
    def model(self) -> nn.Module:
        """The frozen network, loaded on first use."""
        if self._model is None:
            from transformers import AutoModel

            try:
                model = AutoModel.from_pretrained(self.path, local_files_only=True)
            except Exception as err:  # transformers raises many types
                raise OSError(f"semantic teacher {self.path}: cannot be loaded ({err})") from err
            vision = getattr(model, "vision_model", None)
            if self.modality == "image" and isinstance(vision, nn.Module):
                # a full CLIP / SigLIP checkpoint: its forward wants text too; the vision tower
                model = vision
            self._model = model.eval().requires_grad_(False)
        return self._model

    def to(self, device: torch.device) -> FrozenFeatureModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, media: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        device = media.device
        if next(self.model.parameters()).device != device:
            self.to(device)
        if self.modality == "audio":
            audio = media.float().mean(dim=1)
            if self.input_rate != self.model_rate:
                audio = resample(audio, self.input_rate, self.model_rate)
            if self.normalize_audio:
                audio = normalize_per_item(audio)
            hidden = self.model(input_values=audio).last_hidden_state
            return hidden.float(), (hidden.shape[1],)
        images = (media.float() + 1) / 2
        if self.image_size is not None:
            size = int(self.image_size)
            if images.shape[-2:] != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
        images = (images - self.mean.to(device)) / self.std.to(device)
        hidden = self.model(pixel_values=images).last_hidden_state.float()
        h, w = images.shape[-2:]
        p = int(self.patch_size or 1)
        grid = (h // p, w // p)
        patches = grid[0] * grid[1]
        return hidden[:, hidden.shape[1] - patches :], grid  # drop CLS / register tokens


def _processor_image_size(processor: Mapping[str, Any]) -> int | None:
    """The square input side an image processor config feeds its model: ``crop_size``,
    else ``size`` given as a square (an int or equal height / width); None otherwise (a
    ``shortest_edge`` size is the resize before the crop, not the input)."""
    for key in ("crop_size", "size"):
        value = processor.get(key)
        if isinstance(value, int) and value > 0:
            return value
        if (
            isinstance(value, Mapping)
            and value.get("height")
            and value.get("height") == value.get("width")
        ):
            return int(value["height"])
    return None


def normalize_per_item(audio: Tensor) -> Tensor:
    """``(x - mean) / sqrt(var + 1e-7)`` per row of ``audio (b, S)`` (population variance,
    over the whole item), as ``Wav2Vec2FeatureExtractor``'s ``do_normalize`` does."""
    mean = audio.mean(dim=-1, keepdim=True)
    var = audio.var(dim=-1, keepdim=True, unbiased=False)
    return (audio - mean) / torch.sqrt(var + 1e-7)


def resample_grid(features: Tensor, grid: Sequence[int], target: Sequence[int]) -> Tensor:
    """Features ``(b, prod(grid), c)`` on ``grid`` -> ``(b, prod(target), c)`` on ``target``
    (bilinear for 2D grids, linear for 1D; a 1D sequence against a 2D grid is treated as a
    row-major sequence of the grid's length)."""
    grid, target = tuple(grid), tuple(target)
    if grid == target:
        return features
    b, _, c = features.shape
    x = features.transpose(1, 2)
    if len(grid) == 2 and len(target) == 2:
        x = F.interpolate(x.reshape(b, c, *grid), size=target, mode="bilinear", align_corners=False)
        return x.flatten(2).transpose(1, 2)
    size = int(torch.tensor(target).prod())
    return F.interpolate(x, size=size, mode="linear", align_corners=False).transpose(1, 2)


class SemanticRegularizer(nn.Module):
    """``weight * (1 - mean cosine similarity)`` between projected student features and a
    frozen model's features of the same media (grids interpolated to the teacher's).

    Args:
        student_dim: channels of the student features.
        teacher: path of the frozen model (:class:`FrozenFeatureModel`).
        weight: loss weight.
        hidden: projector width (a 2-layer SiLU MLP, as REPA).
        modality: ``"image"`` or ``"audio"``.
        image_size: the teacher's input side (see :class:`FrozenFeatureModel`).
    """

    def __init__(
        self,
        student_dim: int,
        teacher: str | os.PathLike[str],
        *,
        weight: float = 1.0,
        hidden: int = 1024,
        modality: str = "image",
        image_size: int | None = None,
    ):
        super().__init__()
        self.teacher_path = os.fspath(teacher)
        self.modality = modality
        self.weight = float(weight)
        # its config: fails early on a bad path
        probe = FrozenFeatureModel(teacher, modality, image_size=image_size)
        object.__setattr__(self, "_teacher", probe)  # not a submodule: never saved or trained
        self.projector = nn.Sequential(
            nn.Linear(student_dim, hidden), nn.SiLU(), nn.Linear(hidden, probe.dim)
        )

    @property
    def teacher(self) -> FrozenFeatureModel:
        return self._teacher  # type: ignore[no-any-return]

    def forward(self, student: Tensor, student_grid: Sequence[int], media: Tensor) -> Tensor:
        """``student (b, n, student_dim)`` on ``student_grid``; ``media`` the clean input."""
        target, grid = self.teacher(media)
        with torch.autocast(student.device.type, enabled=False):
            projected = self.projector(student.float())
            projected = resample_grid(projected, student_grid, grid)
            cosine = F.cosine_similarity(projected, target.float(), dim=-1)
            return self.weight * (1 - cosine.mean())


def perturb_codes(
    codes: Tensor,
    codebook_sizes: Sequence[int],
    rate: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace a ``rate`` fraction of ``codes (b, levels, *positions)`` (drawn per entry) by
    uniformly random codes of the same level; a replacement may repeat the code. This is
    not RobusTok's nearest-neighbour error model (see :meth:`TrainingOptions.perturb`).
    ``rate = 0`` returns ``codes`` unchanged."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturbation rate must be in [0, 1], got {rate}")
    if rate == 0:
        return codes
    if len(codebook_sizes) != codes.shape[1]:
        raise ValueError(
            f"codes have {codes.shape[1]} levels but {len(codebook_sizes)} codebook sizes were given"
        )
    device = codes.device
    shape = codes.shape
    replace = torch.rand(
        shape, generator=generator, device=generator.device if generator else device
    )
    sizes = torch.tensor(list(codebook_sizes), dtype=torch.float64).view(
        1, -1, *[1] * (codes.ndim - 2)
    )
    random = torch.rand(
        shape, generator=generator, device=generator.device if generator else device
    )
    random_codes = (
        (random.double() * sizes.to(random.device))
        .long()
        .clamp_max(sizes.long().to(random.device) - 1)
    )
    return torch.where(replace.to(device) < rate, random_codes.to(device), codes)


def perturb_latent(
    latent: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """``latent + strength * std(latent) * N(0, 1)``: Gaussian latent perturbation scaled to the
    latent's own spread (per item). ``strength = 0`` returns ``latent``."""
    if strength < 0:
        raise ValueError(f"perturbation strength must be >= 0, got {strength}")
    if strength == 0:
        return latent
    noise = torch.randn(
        latent.shape, generator=generator, device=generator.device if generator else latent.device
    )
    std = latent.detach().flatten(1).std(dim=1).view(-1, *[1] * (latent.ndim - 1))
    return latent + strength * std * noise.to(latent.device, latent.dtype)


NEIGHBOUR_TABLE_LIMIT = 16384  # the largest codebook whose neighbour table is built


def nearest_codes(
    quantizer: nn.Module, codes: Tensor, neighbours: int, *, chunk: int = 1024
) -> Tensor:
    """The ``neighbours`` nearest other codes (Euclidean, between decoded code vectors) of
    each distinct code in the 1-D ``codes``, as ``(len(codes), neighbours)``.

    Only the distinct codes' rows of the codebook's ``K x K`` distance table are computed,
    ``chunk`` rows at a time. Single-level quantizers with ``K <= 16384`` only.

    Raises:
        ValueError: a multi-level quantizer, ``neighbours`` not in ``[1, K - 1]``, or a
            codebook larger than the limit.
    """
    sizes = list(quantizer.codebook_sizes)
    if len(sizes) != 1:
        raise ValueError(
            f"perturbation_neighbours needs a single-level quantizer (one codebook), got "
            f"{len(sizes)} levels; use perturbation_neighbours: 0 (uniformly random codes)"
        )
    k = int(sizes[0])
    if k > NEIGHBOUR_TABLE_LIMIT:
        raise ValueError(
            f"perturbation_neighbours: the codebook has {k} codes, more than the "
            f"{NEIGHBOUR_TABLE_LIMIT} whose neighbour table is built; use "
            "perturbation_neighbours: 0 (uniformly random codes)"
        )
    if not 1 <= neighbours < k:
        raise ValueError(f"perturbation_neighbours must be in [1, {k - 1}], got {neighbours}")
    distinct, inverse = torch.unique(codes, return_inverse=True)
    with torch.no_grad():
        every = torch.arange(k, device=codes.device).view(1, k, 1)
        vectors = quantizer.decode(every)[0].float()  # (K, dim)
        rows = []
        for start in range(0, len(distinct), chunk):
            part = distinct[start : start + chunk]
            dist = torch.cdist(vectors[part], vectors)  # (chunk, K)
            dist[torch.arange(len(part), device=dist.device), part] = float("inf")  # not itself
            rows.append(dist.topk(neighbours, dim=1, largest=False).indices)
    if not rows:
        return codes.new_zeros((0, neighbours))
    return torch.cat(rows)[inverse]


class TrainingOptions(nn.Module):
    """The seed papers' training options for a tokenizer, in one place (recipes set them
    under ``model.config``).

    Args:
        feature_dim: channels of the encoder features the semantic loss aligns.
        semantic_teacher: local frozen model directory (None: no semantic loss).
        semantic_weight: its weight.
        latent_perturbation: fraction of positions (of a perturbed item) whose codes are
            replaced before decoding, in training (0: off).
        modality: ``"image"`` or ``"audio"`` (the teacher's input).
        perturbation_neighbours: 0 (default): a replacement is a uniformly random code;
            ``delta > 0``: one of the code's ``delta`` nearest codebook neighbours, as RobusTok
            (single-level quantizers of at most 16384 codes).
        perturbation_items: fraction of the batch's items perturbed (RobusTok's beta); 1.0
            (default) perturbs every item.
    """

    def __init__(
        self,
        feature_dim: int,
        semantic_teacher: str | os.PathLike[str] | None = None,
        semantic_weight: float = 0.5,
        latent_perturbation: float = 0.0,
        modality: str = "image",
        perturbation_neighbours: int = 0,
        perturbation_items: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= latent_perturbation <= 1.0:
            raise ValueError(f"latent_perturbation must be in [0, 1], got {latent_perturbation}")
        if int(perturbation_neighbours) != perturbation_neighbours or perturbation_neighbours < 0:
            raise ValueError(
                f"perturbation_neighbours must be an integer >= 0, got {perturbation_neighbours}"
            )
        if not 0.0 <= perturbation_items <= 1.0:
            raise ValueError(f"perturbation_items must be in [0, 1], got {perturbation_items}")
        self.latent_perturbation = float(latent_perturbation)
        self.perturbation_neighbours = int(perturbation_neighbours)
        self.perturbation_items = float(perturbation_items)
        self.semantic = (
            SemanticRegularizer(
                feature_dim, semantic_teacher, weight=semantic_weight, modality=modality
            )
            if semantic_teacher
            else None
        )

    def perturb(self, quantizer: nn.Module, quantized: Tensor, codes: Tensor) -> Tensor:
        """In training, swap a ``latent_perturbation`` fraction of positions of the channel-
        first ``quantized (b, d, *positions)`` for the look-up of other codes; ``codes`` are
        ``(b, levels, *positions)``. Only a ``perturbation_items`` fraction of the items is
        perturbed; a replacement is a uniformly random code, or with ``perturbation_neighbours
        = delta`` one of the code's delta nearest neighbours. The swapped positions carry no
        gradient to the encoder."""
        if not self.training or self.latent_perturbation == 0 or self.perturbation_items == 0:
            return quantized
        # one draw per position (all its levels together), so the documented fraction of
        # positions holds for multi-level quantizers (RVQ, group LFQ) too
        positions = (codes.shape[0], 1, *codes.shape[2:])
        chosen = torch.rand(positions, device=codes.device) < self.latent_perturbation
        if self.perturbation_items < 1:
            items = torch.rand(codes.shape[0], device=codes.device) < self.perturbation_items
            chosen = chosen & items.view(-1, *[1] * (codes.ndim - 1))
        if self.perturbation_neighbours:  # single-level codes (nearest_codes checks)
            mask = chosen[:, 0]
            table = nearest_codes(quantizer, codes[:, 0][mask], self.perturbation_neighbours)
            pick = torch.randint(0, table.shape[1], (table.shape[0], 1), device=codes.device)
            noisy = codes.clone()
            noisy[:, 0][mask] = table.gather(1, pick).squeeze(1).to(codes.dtype)
        else:
            noisy = torch.where(chosen, perturb_codes(codes, quantizer.codebook_sizes, 1.0), codes)
        changed = (noisy != codes).any(dim=1, keepdim=True)
        with torch.no_grad():
            replacement = torch.movedim(quantizer.decode(torch.movedim(noisy, 1, -1)), -1, 1)
        return torch.where(changed, replacement.to(quantized.dtype), quantized)

    def losses(self, features: Tensor, grid: Sequence[int], media: Tensor) -> dict[str, Tensor]:
        """``{"semantic": ...}`` for channel-last ``features (b, n, feature_dim)`` on ``grid``
        when a teacher is configured, else ``{}``."""
        if self.semantic is None or not self.training:
            return {}
        return {"semantic": self.semantic(features, grid, media)}


def teacher_projector_keys(model: nn.Module) -> dict[str, list[str]]:
    """The ``state_dict`` keys of every teacher regularizer's projector in ``model`` (e.g.
    ``options.semantic``, FlexTok's ``decoder.repa``), by the regularizer's module name.
    Exports drop them with the teacher; they are trained from scratch when it returns."""
    keys = list(model.state_dict())
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SemanticRegularizer):
            prefix = f"{name}."
            found[name] = [k for k in keys if k.startswith(prefix)]
    return found


def freeze(*modules: nn.Module) -> None:
    """Freeze modules for decoder post-training: no gradients, and kept in eval mode by the
    owner's ``train()`` (so EMA codebooks stop updating)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()


__all__ = [
    "FrozenFeatureModel",
    "SemanticRegularizer",
    "TrainingOptions",
    "freeze",
    "nearest_codes",
    "normalize_per_item",
    "perturb_codes",
    "perturb_latent",
    "resample_grid",
    "teacher_projector_keys",
]
