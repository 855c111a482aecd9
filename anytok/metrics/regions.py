"""TokBench-style region fidelity: how well text and faces survive tokenization.

TokBench (Wu et al. 2025, https://arxiv.org/abs/2505.18142) scores reconstructions on the
regions people look at first, text and faces, binned by how large they appear: small text
is where tokenizers fail. Here:

- regions come from an annotation JSON (:func:`load_annotations`): boxes in the original
  image's pixels, a kind (``text`` or ``face``) and, for text, optionally its transcript;
- boxes follow the image through the benchmark's resize-and-centre-crop
  (:func:`map_box_cover`) and are binned by their longest side relative to the image's
  (:data:`SCALE_BINS`);
- every region gets PSNR over its pixels and the mean of the full image's SSIM map over its
  box (so tiny regions need no resizing); with user-supplied models, text regions get OCR
  scores (exact match ``t_acc`` and normalised edit similarity ``t_ned``, against the
  transcript or else against the OCR of the input crop) and face regions the cosine
  similarity of face embeddings (``face_sim``).

The OCR model is a CRNN (Shi et al. 2015, https://arxiv.org/abs/1507.05717) in the layout of
the classic ``crnn.pytorch`` checkpoint (32x100 grayscale, 36 lower-case alphanumerics);
face embeddings come from a torchvision classification architecture named by the user.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F

from anytok.metrics.weights import MetricWeightsError, check_weights_path, load_weights

REGION_KINDS = ("text", "face")
#: ``(name, low, high)``: a region's longest side over the image's longest side.
SCALE_BINS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 0.1),
    ("medium", 0.1, 0.3),
    ("large", 0.3, math.inf),
)
#: Regions smaller than this (pixels, either side) after resizing are dropped.
MIN_REGION_SIDE = 2


@dataclass(frozen=True)
class Region:
    """One annotated region: ``box = (x0, y0, x1, y1)`` in pixels, x1/y1 exclusive."""

    kind: str
    box: tuple[float, float, float, float]
    text: str | None = None


def load_annotations(path: str | os.PathLike[str]) -> dict[str, list[Region]]:
    """Read a region annotation file.

    Format: ``{"<image path relative to the data folder, or its file name>": [{"kind":
    "text" | "face", "box": [x0, y0, x1, y1], "text": "optional transcript"}, ...]}``.

    Raises:
        ValueError: naming the file and the entry that is wrong.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"region annotations {p}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"region annotations {p}: expected an object keyed by image path")
    out: dict[str, list[Region]] = {}
    for image, entries in data.items():
        regions = []
        for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
            where = f"region annotations {p}: {image!r} entry {i}"
            if not isinstance(entry, dict) or entry.get("kind") not in REGION_KINDS:
                raise ValueError(f"{where}: needs 'kind' in {REGION_KINDS} and 'box'")
            box = entry.get("box")
            numbers = isinstance(box, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in box
            )
            if not (numbers and len(box) == 4) or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"{where}: 'box' must be [x0, y0, x1, y1] with x1 > x0, y1 > y0")
            text = entry.get("text")
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{where}: 'text' must be a string (the transcript)")
            regions.append(Region(entry["kind"], tuple(float(v) for v in box), text))  # type: ignore[arg-type]
        out[image] = regions
    return out


def regions_for(
    annotations: dict[str, list[Region]], path: Path, root: Path | None
) -> list[Region]:
    """The regions annotated for ``path``: by path relative to ``root``, else by file name."""
    if root is not None and root.is_dir():
        rel = path.relative_to(root).as_posix()
        if rel in annotations:
            return annotations[rel]
    return annotations.get(path.name, [])


def map_box_cover(
    box: Sequence[float], original_hw: tuple[int, int], target_hw: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Map a box through :func:`anytok.media.resize_cover` (scale to cover, centre crop).

    Returns integer ``(x0, y0, x1, y1)`` clipped to the target, or None when less than
    :data:`MIN_REGION_SIDE` pixels of it remain.
    """
    in_h, in_w = original_hw
    h, w = target_hw
    scale_y = scale_x = 1.0
    top = left = 0
    if (in_h, in_w) != (h, w):  # the same arithmetic as resize_cover / center_crop
        scale = max(h / in_h, w / in_w)
        new_h, new_w = max(h, round(in_h * scale)), max(w, round(in_w * scale))
        scale_y, scale_x = new_h / in_h, new_w / in_w
        top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)
    x0 = max(0, math.floor(box[0] * scale_x - left))
    y0 = max(0, math.floor(box[1] * scale_y - top))
    x1 = min(w, math.ceil(box[2] * scale_x - left))
    y1 = min(h, math.ceil(box[3] * scale_y - top))
    if x1 - x0 < MIN_REGION_SIDE or y1 - y0 < MIN_REGION_SIDE:
        return None
    return x0, y0, x1, y1


def scale_bin(box: Sequence[int], image_hw: tuple[int, int]) -> str:
    """The :data:`SCALE_BINS` name of a box in an image of ``image_hw``."""
    relative = max(box[2] - box[0], box[3] - box[1]) / max(image_hw)
    for name, low, high in SCALE_BINS:
        if low <= relative < high:
            return name
    return SCALE_BINS[-1][0]


def crop(image: Tensor, box: Sequence[int]) -> Tensor:
    """``(..., H, W)`` -> ``(..., y1 - y0, x1 - x0)``."""
    x0, y0, x1, y1 = box
    return image[..., y0:y1, x0:x1]


# --------------------------------------------------------------------------- OCR (CRNN)


#: The alphabet of the classic CRNN checkpoint; index 0 is the CTC blank.
CRNN_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


class _BidirectionalLSTM(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.rnn = nn.LSTM(in_features, hidden, bidirectional=True)
        self.embedding = nn.Linear(2 * hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:  # (t, b, c)
        out, _ = self.rnn(x)
        return self.embedding(out)


class CRNN(nn.Module):
    """Text-line recogniser: grayscale ``(b, 1, 32, W)`` in [-1, 1] -> CTC logits
    ``(W / 4 + 1, b, len(alphabet) + 1)``.

    Seven 3x3 conv layers (batch norm on 2, 4, 6) with max pools down to height 1, then two
    bidirectional LSTMs (256 hidden). Module names ``cnn.conv{i}``, ``cnn.batchnorm{i}``,
    ``rnn.{0,1}.rnn`` / ``.embedding`` follow the crnn.pytorch checkpoint.
    """

    height = 32
    width = 100

    def __init__(self, alphabet: str = CRNN_ALPHABET, hidden: int = 256):
        super().__init__()
        self.alphabet = alphabet
        widths = [64, 128, 256, 256, 512, 512, 512]
        # After conv i: None, or the max pool (kernel, stride, padding) that follows it.
        pools = {
            0: ((2, 2), (2, 2), (0, 0)),
            1: ((2, 2), (2, 2), (0, 0)),
            3: ((2, 2), (2, 1), (0, 1)),
            5: ((2, 2), (2, 1), (0, 1)),
        }
        cnn = nn.Sequential()
        channels = 1
        for i, width in enumerate(widths):
            kernel, padding = (2, 0) if i == 6 else (3, 1)
            cnn.add_module(f"conv{i}", nn.Conv2d(channels, width, kernel, 1, padding))
            if i in (2, 4, 6):
                cnn.add_module(f"batchnorm{i}", nn.BatchNorm2d(width))
            cnn.add_module(f"relu{i}", nn.ReLU(True))
            if i in pools:
                k, s, p = pools[i]
                cnn.add_module(f"pooling{len([j for j in pools if j < i])}", nn.MaxPool2d(k, s, p))
            channels = width
        self.cnn = cnn
        self.rnn = nn.Sequential(
            _BidirectionalLSTM(512, hidden, hidden),
            _BidirectionalLSTM(hidden, hidden, len(alphabet) + 1),
        )

    def forward(self, lines: Tensor) -> Tensor:
        features = self.cnn(lines)  # (b, 512, 1, w)
        return self.rnn(features.squeeze(2).permute(2, 0, 1))

    @torch.inference_mode()
    def read(self, crops: Sequence[Tensor]) -> list[str]:
        """RGB crops ``(3, h, w)`` in [-1, 1] -> lower-case transcripts (greedy CTC)."""
        device = next(self.parameters()).device
        lines = torch.stack(
            [
                F.interpolate(
                    _grayscale(c)[None].float(),
                    size=(self.height, self.width),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
                for c in crops
            ]
        ).to(device)
        best = self(lines).argmax(dim=-1).transpose(0, 1).cpu()  # (b, t)
        texts = []
        for path in best:
            merged = torch.unique_consecutive(path).tolist()
            texts.append("".join(self.alphabet[i - 1] for i in merged if i > 0))
        return texts

    @classmethod
    def from_weights(cls, path: str | os.PathLike[str] | None) -> CRNN:
        model = cls()
        if path is not None:
            load_weights(model, path, what="OCR model (CRNN)")
        return model.eval().requires_grad_(False)


def _grayscale(rgb: Tensor) -> Tensor:
    """``(3, h, w)`` -> ``(1, h, w)`` with ITU-R 601 luma weights."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    return (rgb * weights[:, None, None]).sum(dim=0, keepdim=True)


def normalized_edit_similarity(prediction: str, target: str) -> float:
    """``1 - levenshtein / max(len)`` over characters (TokBench's NED); 1 for two empties."""
    longest = max(len(prediction), len(target))
    if longest == 0:
        return 1.0
    return 1.0 - torchaudio.functional.edit_distance(list(prediction), list(target)) / longest


def _normalize_text(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


# --------------------------------------------------------------------------- faces


class FaceEmbedder(nn.Module):
    """Face crops -> unit-norm embeddings with a torchvision architecture.

    The network's output (the width of its last layer, read from the weights) is the
    embedding. Crops are resized to ``input_size`` and fed in [-1, 1] (ArcFace's
    ``(x - 127.5) / 128`` up to 0.4%).
    """

    def __init__(self, arch: str, num_features: int, input_size: int = 112):
        super().__init__()
        import torchvision

        try:
            self.net = torchvision.models.get_model(arch, weights=None, num_classes=num_features)
        except (ValueError, KeyError) as err:
            raise MetricWeightsError(
                f"face model: unknown torchvision architecture {arch!r} ({err})"
            ) from err
        self.arch = arch
        self.input_size = input_size

    @torch.inference_mode()
    def embed(self, crops: Sequence[Tensor]) -> Tensor:
        """RGB crops ``(3, h, w)`` in [-1, 1] -> ``(n, num_features)``."""
        device = next(self.parameters()).device
        size = (self.input_size, self.input_size)
        batch = torch.stack(
            [
                F.interpolate(
                    c[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
                )[0]
                for c in crops
            ]
        ).to(device)
        return F.normalize(self.net(batch).float(), dim=-1).cpu()

    @classmethod
    def from_weights(
        cls, arch: str, path: str | os.PathLike[str] | None, num_features: int = 512
    ) -> FaceEmbedder:
        """Build ``arch`` with as many outputs as its last linear layer has in the weights."""
        model = cls(arch, num_features)
        if path is None:
            return model.eval().requires_grad_(False)
        from safetensors import safe_open

        last = [name for name, m in model.net.named_modules() if isinstance(m, nn.Linear)][-1:]
        with safe_open(str(check_weights_path(path, "face model")), framework="pt") as handle:
            key = f"{last[0]}.weight" if last else None
            if key is not None and key in handle.keys():  # noqa: SIM118
                width = int(handle.get_slice(key).get_shape()[0])
                if width != num_features:
                    model = cls(arch, width)
        load_weights(model.net, path, what=f"face model ({arch})")
        return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- scoring


def score_regions(
    reference: Tensor,
    reconstruction: Tensor,
    ssim_map: Tensor,
    regions: Sequence[Region],
    original_hw: tuple[int, int],
    *,
    ocr: CRNN | None = None,
    face: FaceEmbedder | None = None,
) -> list[dict[str, Any]]:
    """Score one image's regions.

    Args:
        reference, reconstruction: ``(3, H, W)`` in [-1, 1] (the benchmark's input and output).
        ssim_map: ``(3, H, W)`` SSIM map of the pair (:func:`anytok.metrics.image.ssim`).
        regions: boxes in the original image's pixels.
        original_hw: the original image's ``(height, width)``.

    Returns:
        One dict per region that survives the resize: ``kind``, ``scale``, ``box`` and the
        scores (``psnr``, ``ssim``; ``t_acc`` / ``t_ned`` or ``face_sim`` with models).
    """
    from anytok.metrics.image import psnr

    hw = (reference.shape[-2], reference.shape[-1])
    rows: list[dict[str, Any]] = []
    text_rows: list[tuple[dict[str, Any], Tensor, Tensor, str | None]] = []
    face_rows: list[tuple[dict[str, Any], Tensor, Tensor]] = []
    for region in regions:
        box = map_box_cover(region.box, original_hw, hw)
        if box is None:
            continue
        ref_crop, rec_crop = crop(reference, box), crop(reconstruction, box)
        row: dict[str, Any] = {
            "kind": region.kind,
            "scale": scale_bin(box, hw),
            "box": list(box),
            "psnr": float(psnr(ref_crop[None], rec_crop[None])[0]),
            "ssim": float(crop(ssim_map, box).mean()),
        }
        rows.append(row)
        if region.kind == "text" and ocr is not None:
            text_rows.append((row, ref_crop, rec_crop, region.text))
        elif region.kind == "face" and face is not None:
            face_rows.append((row, ref_crop, rec_crop))
    if text_rows and ocr is not None:
        read_rec = ocr.read([r[2] for r in text_rows])
        read_ref = ocr.read([r[1] for r in text_rows])
        for (row, _, _, truth), rec_text, ref_text in zip(text_rows, read_rec, read_ref):
            target = _normalize_text(truth) if truth is not None else ref_text
            row["ocr"] = rec_text
            row["ocr_target"] = target
            row["t_acc"] = float(rec_text == target)
            row["t_ned"] = normalized_edit_similarity(rec_text, target)
    if face_rows and face is not None:
        a = face.embed([r[1] for r in face_rows])
        b = face.embed([r[2] for r in face_rows])
        for (row, _, _), sim in zip(face_rows, (a * b).sum(dim=-1).tolist()):
            row["face_sim"] = sim
    return rows


__all__ = [
    "CRNN",
    "CRNN_ALPHABET",
    "REGION_KINDS",
    "SCALE_BINS",
    "FaceEmbedder",
    "Region",
    "crop",
    "load_annotations",
    "map_box_cover",
    "normalized_edit_similarity",
    "regions_for",
    "scale_bin",
    "score_regions",
]
