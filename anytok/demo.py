"""``anytok demo``: each modality's default tokenizer on bundled sample media.

Encodes and decodes a real photo, a speech clip and a short video built from photos, writes
inputs and reconstructions, and prints (and saves as JSON) a report: token count and layout,
token rate, bitrate, fidelity, timings. A tokenizer without trained weights is reported as
"untrained" in plain words: its fidelity numbers then say nothing about the architecture.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import anytok
from anytok.media import resize_cover, samples
from anytok.metrics import mel_distance, psnr, stoi
from anytok.pipeline import autocast_for, save_media
from anytok.registry import DEFAULT_MODELS, UNTRAINED


@dataclass
class DemoResult:
    """One row of the demo report."""

    modality: str
    input: str
    tokenizer: str
    weights: str
    token_count: int
    layout: str
    token_rate: str
    bitrate: str
    fidelity: str
    encode_seconds: float
    decode_seconds: float
    input_path: str
    output_path: str


def _timed(fn, *args):
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(*args)
    return out, time.perf_counter() - start


def _layout(tokens: anytok.Tokens) -> str:
    names = ["level", *tokens.spec.layout]
    return " x ".join(f"{n} {s}" for n, s in zip(names, tokens.codes.shape[1:]))


def _run_one(modality: str, out_dir: Path, device: str) -> DemoResult:
    name = DEFAULT_MODELS[modality]
    model = anytok.load(name, device=device)
    dev = torch.device(device)
    tag = getattr(model, "anytok_tag", UNTRAINED)
    weights = (
        "UNTRAINED (random weights: fidelity is meaningless until trained weights ship)"
        if tag == UNTRAINED
        else tag
    )
    if modality == "audio":
        clip = samples.sample_speech()
        media = anytok.media.resample(clip.waveform, clip.sample_rate, model.sample_rate)
        media = anytok.media.to_channels(media, model.channels)
        description = (
            f"speech, {media.shape[-1] / model.sample_rate:.2f} s at {model.sample_rate} Hz"
        )
    elif modality == "image":
        media = resize_cover(samples.sample_image().image, model.resolution)
        description = f"photo (skimage astronaut), {media.shape[-1]}x{media.shape[-2]}"
    else:
        clip = samples.sample_video(fps=model.fps)
        media = clip.video
        description = f"{media.shape[1]} frames {media.shape[-1]}x{media.shape[-2]} @ {clip.fps:g} fps, built from photos"
    batch = media.unsqueeze(0).to(dev)
    with autocast_for(dev):
        tokens, t_enc = _timed(model.encode, batch)
        recon, t_dec = _timed(model.decode, tokens)
    recon = recon.float()[..., : batch.shape[-1]] if modality == "audio" else recon.float()
    if modality == "video":
        recon = recon[:, :, : batch.shape[2]]
    count = int(tokens.tokens_per_item[0])
    bits = float(tokens.bits_per_item[0])
    if modality == "audio":
        rate = f"{tokens.tokens_per_second:.1f} tokens/s"
        bitrate = f"{tokens.bits_per_second / 1000:.2f} kbps"
        fidelity = (
            f"mel distance {mel_distance(batch, recon, model.sample_rate).item():.3f}, "
            f"STOI {stoi(batch, recon, model.sample_rate).item():.3f}"
        )
    elif modality == "image":
        rate = f"{count} tokens/image"
        bitrate = f"{bits:.0f} bits/image ({bits / (batch.shape[-1] * batch.shape[-2]):.4f} bpp)"
        fidelity = f"PSNR {psnr(batch, recon).item():.2f} dB"
    else:
        rate = f"{tokens.tokens_per_second:.1f} tokens/s"
        bitrate = f"{tokens.bits_per_second / 1000:.2f} kbps"
        fidelity = f"PSNR {psnr(batch, recon).item():.2f} dB"
    ext = {"audio": ".wav", "image": ".png", "video": ".mp4"}[modality]
    input_path = out_dir / f"{modality}_input{ext}"
    output_path = out_dir / f"{modality}_reconstruction{ext}"
    save_media(model, batch[0].cpu(), input_path)
    save_media(model, recon[0].cpu(), output_path)
    tokens.to("cpu").save(out_dir / f"{modality}.tokens.safetensors")
    return DemoResult(
        modality=modality,
        input=description,
        tokenizer=name,
        weights=weights,
        token_count=count,
        layout=_layout(tokens),
        token_rate=rate,
        bitrate=bitrate,
        fidelity=fidelity,
        encode_seconds=round(t_enc, 3),
        decode_seconds=round(t_dec, 3),
        input_path=str(input_path),
        output_path=str(output_path),
    )


def run_demo(
    out_dir: Path, *, device: str = "cpu", console: Console | None = None
) -> list[DemoResult]:
    """Run the demo for every modality; write files and ``report.json`` under ``out_dir``."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for modality in ("image", "audio", "video"):
        console.print(f"[bold]{modality}[/bold]: {DEFAULT_MODELS[modality]} ...")
        results.append(_run_one(modality, out_dir, device))
    table = Table(title="anytok demo: encode -> decode with each modality's default tokenizer")
    fields = [
        ("input", "input"),
        ("tokenizer", "tokenizer"),
        ("weights", "weights"),
        ("tokens", "token_count"),
        ("layout", "layout"),
        ("token rate", "token_rate"),
        ("bitrate", "bitrate"),
        ("fidelity", "fidelity"),
        ("encode s", "encode_seconds"),
        ("decode s", "decode_seconds"),
        ("output", "output_path"),
    ]
    table.add_column("", style="bold")
    for r in results:
        table.add_column(r.modality)
    for label, attr in fields:
        table.add_row(label, *[str(getattr(r, attr)) for r in results])
    console.print(table)
    (out_dir / "report.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    console.print(f"report: {out_dir / 'report.json'}", markup=False)
    return results
