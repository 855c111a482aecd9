"""The metrics a benchmark computes for each modality, and the models they need.

:class:`MetricSuite` loads the model-based metrics the user gave weights for (once, shared by
every tokenizer in the run), says in :attr:`MetricSuite.notes` which ones it skipped and why,
and scores reference / reconstruction pairs. :data:`METRICS` documents every metric name a
report can hold (DASB / Codec-SUPERB / TokBench naming).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anytok.metrics import audio as audio_metrics
from anytok.metrics import image as image_metrics
from anytok.metrics import video as video_metrics
from anytok.metrics.weights import MetricWeightsError, ModelWeights, check_weights_path


@dataclass(frozen=True)
class MetricInfo:
    """What a metric name means: its direction, unit and definition."""

    higher_is_better: bool
    unit: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "description": self.description,
        }


METRICS: dict[str, MetricInfo] = {
    # audio
    "mel_distance": MetricInfo(False, "log10 mel", "multi-scale L1 log-mel distance (512/1024/2048 FFT, 80 mels)"),
    "stft_distance": MetricInfo(False, "", "multi-resolution STFT distance (audiotools MultiScaleSTFTLoss: windows 2048/512)"),
    "si_sdr": MetricInfo(True, "dB", "scale-invariant SDR, zero-mean (torchmetrics)"),
    "pesq_wb": MetricInfo(True, "MOS-LQO", "PESQ wide-band (P.862.2) at 16 kHz (pesq)"),
    "pesq_nb": MetricInfo(True, "MOS-LQO", "PESQ narrow-band (P.862.1) at 16 kHz (pesq)"),
    "stoi": MetricInfo(True, "", "short-time objective intelligibility (pystoi)"),
    "utmos": MetricInfo(True, "MOS", "UTMOS22 strong learner predicted MOS of the reconstruction"),
    "spk_sim": MetricInfo(True, "cosine", "speaker similarity: cosine of SSL speaker embeddings"),
    "wer": MetricInfo(False, "", "word error rate of CTC ASR on the reconstruction vs the given transcript"),
    "dwer": MetricInfo(False, "", "dWER: WER of ASR on the reconstruction vs ASR on the input"),
    # image
    "psnr": MetricInfo(True, "dB", "peak signal-to-noise ratio (video: mean over frames)"),
    "ssim": MetricInfo(True, "", "SSIM, Gaussian 11x11 sigma 1.5, on [0, 1] (video: mean over frames)"),
    "ms_ssim": MetricInfo(True, "", "multi-scale SSIM (torchmetrics), needs sides >= 176 px"),
    "lpips": MetricInfo(False, "", "LPIPS (torchmetrics network, user weights)"),
    "rfid": MetricInfo(False, "", "reconstruction FID between inputs and reconstructions"),
    # video
    "frame_diff_error": MetricInfo(False, "[-1, 1] units", "temporal consistency: mean |diff_t(rec) - diff_t(input)|"),
    "fvd": MetricInfo(False, "", "Fréchet video distance with I3D features"),
    # TokBench-style regions (per kind and scale: region/<kind>/<scale>/<metric>)
    "t_acc": MetricInfo(True, "", "text regions: OCR exact match with the transcript (or the input's OCR)"),
    "t_ned": MetricInfo(True, "", "text regions: 1 - normalised edit distance of OCR strings"),
    "face_sim": MetricInfo(True, "cosine", "face regions: cosine of face embeddings"),
}  # fmt: skip

#: The metrics rate-distortion plots show first, per modality.
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "audio": ("mel_distance", "stft_distance", "si_sdr", "pesq_wb", "pesq_nb", "stoi", "utmos", "spk_sim", "dwer", "wer"),
    "image": ("psnr", "ssim", "ms_ssim", "lpips", "rfid"),
    "video": ("psnr", "ssim", "frame_diff_error", "fvd"),
}  # fmt: skip


#: The command-line flag that gives each of :class:`MetricModels`' weights.
FLAGS = {
    "utmos": "--utmos",
    "speaker": "--speaker-model",
    "asr": "--asr-model",
    "lpips": "--lpips",
    "fid_inception": "--fid-inception",
    "i3d": "--i3d",
    "ocr": "--ocr-model",
    "face": "--face-model",
}


@dataclass
class MetricModels:
    """Weights for the model-based metrics (each None: that metric is skipped with a note)."""

    utmos: ModelWeights | None = None
    speaker: ModelWeights | None = None
    asr: ModelWeights | None = None
    asr_labels: tuple[str, ...] | None = None
    lpips: ModelWeights | None = None
    fid_inception: Path | None = None
    i3d: Path | None = None
    ocr: Path | None = None
    face: ModelWeights | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, ModelWeights):
                out[key] = {"arch": value.arch, "path": str(value.path)}
            elif isinstance(value, Path):
                out[key] = str(value)
            elif value is not None:
                out[key] = list(value)
            else:
                out[key] = None
        return out


def load_transcripts(path: str | os.PathLike[str]) -> dict[str, str]:
    """A JSON object mapping an audio file (relative path or file name) to its transcript."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"transcripts {p}: cannot read JSON ({err})") from err
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"transcripts {p}: expected an object mapping file names to text")
    return data


@dataclass
class MetricSuite:
    """Scores pairs for one run; model-based metrics load on first use of their modality."""

    models: MetricModels = field(default_factory=MetricModels)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notes: list[str] = field(default_factory=list)
    backends: dict[str, str] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict)
    _prepared: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ loading

    def check_paths(self) -> None:
        """Check that every weights file given exists and is safetensors, and that an LPIPS
        network is one torchmetrics has (cheap, up front: before any tokenizer loads)."""
        lpips = self.models.lpips
        if lpips is not None and lpips.arch not in (None, *image_metrics.LPIPS_NETS):
            raise MetricWeightsError(
                f"{FLAGS['lpips']}: unknown network {lpips.arch!r}; choose one of "
                f"{', '.join(image_metrics.LPIPS_NETS)}"
            )
        for key, spec in vars(self.models).items():
            path = spec.path if isinstance(spec, ModelWeights) else spec
            if isinstance(path, Path):
                check_weights_path(path, FLAGS.get(key, key))

    def prepare(self, modality: str) -> None:
        """Load the models ``modality`` needs (once) and note the metrics skipped."""
        if modality in self._prepared:
            return
        self._prepared.add(modality)
        m = self.models
        if modality == "audio":
            from anytok.metrics import speech_models as sm

            self._load(
                "utmos", "UTMOS",
                lambda w: sm.UTMOS22Strong.from_weights(w.path, w.arch or "wav2vec2_base"),
            )  # fmt: skip
            self._load(
                "speaker", "speaker similarity",
                lambda w: sm.SpeakerEncoder.from_weights(w.arch or "wavlm_base", w.path),
            )  # fmt: skip
            self._load(
                "asr", "WER / dWER",
                lambda w: sm.CTCRecognizer.from_weights(w.arch or "wav2vec2_base", w.path, m.asr_labels),
            )  # fmt: skip
        elif modality == "image":
            from anytok.metrics.fid import FID_BACKEND, FIDInceptionV3
            from anytok.metrics.image import LPIPS
            from anytok.metrics.regions import CRNN, FaceEmbedder

            self._load("lpips", "LPIPS", lambda w: LPIPS(w.path, net=w.arch or "alex"))
            if self._load("fid_inception", "rFID", FIDInceptionV3.from_weights):
                self.backends["rfid"] = FID_BACKEND
            self._load("ocr", "text-region OCR (t_acc, t_ned)", CRNN.from_weights)
            self._load(
                "face", "face-region similarity",
                lambda w: FaceEmbedder.from_weights(w.arch or "resnet50", w.path),
            )  # fmt: skip
        elif modality == "video":
            from anytok.metrics.i3d import FVD_BACKEND, I3DFeatures

            if self._load("i3d", "FVD", I3DFeatures.from_weights):
                self.backends["fvd"] = FVD_BACKEND

    def _load(self, key: str, what: str, build: Callable[[Any], Any]) -> bool:
        """Build the model of :class:`MetricModels` field ``key`` if weights were given."""
        spec = getattr(self.models, key)
        if spec is None:
            self.notes.append(f"{what}: not computed (no weights given; pass {FLAGS[key]})")
            return False
        model = build(spec)
        self._loaded[key] = model.to(self.device) if isinstance(model, torch.nn.Module) else model
        return True

    def model(self, key: str) -> Any:
        return self._loaded.get(key)

    # ------------------------------------------------------------------ audio

    def score_audio(
        self,
        reference: Tensor,
        reconstruction: Tensor,
        sample_rate: int,
        reference_text: str | None = None,
        text_is_transcript: bool = False,
    ) -> dict[str, float]:
        """Every audio metric for one item ``(1, channels, samples)`` (lengths may differ).

        ``reference_text`` is the given transcript (``text_is_transcript``) or the ASR of
        the input; the WER against it is reported as ``wer`` or ``dwer``.
        """
        ref, rec = audio_metrics.align(reference, reconstruction.clamp(-1, 1))
        scores = {
            "mel_distance": _item(audio_metrics.mel_distance(ref, rec, sample_rate)),
            "stft_distance": _item(audio_metrics.stft_distance(ref, rec)),
            "si_sdr": _item(audio_metrics.si_sdr(ref, rec)),
            "pesq_wb": _item(audio_metrics.pesq(ref, rec, sample_rate, "wb")),
            "pesq_nb": _item(audio_metrics.pesq(ref, rec, sample_rate, "nb")),
            "stoi": _item(audio_metrics.stoi(ref, rec, sample_rate)),
        }
        from anytok.metrics import speech_models as sm

        if (utmos := self.model("utmos")) is not None:
            scores["utmos"] = _item(sm.utmos(utmos, rec, sample_rate))
        if (speaker := self.model("speaker")) is not None:
            scores["spk_sim"] = _item(sm.speaker_similarity(speaker, ref, rec, sample_rate))
        if (asr := self.model("asr")) is not None and reference_text is not None:
            hypothesis = asr.transcribe(rec, sample_rate)[0]
            key = "wer" if text_is_transcript else "dwer"
            errors, words = sm.word_errors(hypothesis, reference_text)
            scores[key] = errors / max(words, 1)
            scores[f"{key}_words"] = words  # the summary's corpus WER weighs items by it
        return scores

    def transcribe(self, audio: Tensor, sample_rate: int) -> str | None:
        """ASR of one input ``(1, channels, samples)``, or None without an ASR model."""
        asr = self.model("asr")
        return None if asr is None else asr.transcribe(audio, sample_rate)[0]

    # ------------------------------------------------------------------ image / video

    def score_images(self, reference: Tensor, reconstruction: Tensor) -> list[dict[str, float]]:
        """Per-image metrics for ``(b, 3, H, W)`` pairs -> one dict per image."""
        rec = reconstruction.float().clamp(-1, 1)
        columns: dict[str, Tensor] = {
            "psnr": image_metrics.psnr(reference, rec),
            "ssim": _ssim_or_nan(image_metrics.ssim, reference, rec),
            "ms_ssim": image_metrics.ms_ssim(reference, rec),
        }
        if (lpips := self.model("lpips")) is not None:
            columns["lpips"] = lpips(reference, rec)
        return [{k: float(v[i]) for k, v in columns.items()} for i in range(reference.shape[0])]

    def score_video(self, reference: Tensor, reconstruction: Tensor) -> dict[str, float]:
        """Per-clip metrics for one ``(1, 3, T, H, W)`` pair."""
        rec = reconstruction.float().clamp(-1, 1)
        return {
            "psnr": _item(video_metrics.frame_psnr(reference, rec)),
            "ssim": _item(_ssim_or_nan(video_metrics.frame_ssim, reference, rec)),
            "frame_diff_error": _item(video_metrics.temporal_consistency(reference, rec)),
        }

    def distribution_metrics(self, modality: str) -> dict[str, Any]:
        """Fresh accumulators of the dataset-level metrics (``rfid`` / ``fvd``) available."""
        from anytok.metrics.fid import FrechetDistance

        out: dict[str, Any] = {}
        if modality == "image" and (fid := self.model("fid_inception")) is not None:
            out["rfid"] = FrechetDistance(fid, self.device)
        if modality == "video" and (i3d := self.model("i3d")) is not None:
            out["fvd"] = FrechetDistance(i3d, self.device)
        return out


def _ssim_or_nan(
    metric: Callable[[Tensor, Tensor], Tensor], reference: Tensor, rec: Tensor
) -> Tensor:
    """SSIM per item, or NaN where the images (frames) are smaller than its window: a metric
    that cannot score an item never stops the run."""
    if min(reference.shape[-2:]) < image_metrics.ssim_min_side():
        return torch.full((reference.shape[0],), float("nan"))
    return metric(reference, rec)


def _item(values: Tensor) -> float:
    """The one value of a ``(1,)`` metric result."""
    return float(values.reshape(-1)[0])


__all__ = [
    "METRICS",
    "PRIMARY_METRICS",
    "MetricInfo",
    "MetricModels",
    "MetricSuite",
    "load_transcripts",
]
