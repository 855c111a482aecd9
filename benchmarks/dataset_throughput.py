"""Throughput of ``anytok encode-dataset``: items/s, tokens/s and x-realtime of the local and
the Ray engine on a synthetic dataset, plus a check that both engines (and batch sizes 1 and
N) give byte-identical shards on this machine's device and precision.

    python benchmarks/dataset_throughput.py                       # default audio tokenizer, GPU if any
    python benchmarks/dataset_throughput.py --model cnn_fsq_256 --items 2048
    python benchmarks/dataset_throughput.py --engines local --device cuda:0,cuda:1
    python benchmarks/dataset_throughput.py --tiny --items 32 --seconds 1   # CPU smoke run

Ray needs the ``anytok[ray]`` extra; without it only the local engine is measured. Timings
are end to end, as a user sees them (``DatasetSummary.elapsed``: listing, plan, data loading,
encoding, Parquet writing; for Ray also starting the actors and loading the model in each,
but not starting the local cluster, which a real job would find running), so use enough
items for start-up to amortise. Results go to stdout as JSON and, with ``--out``, as a
Markdown table.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def make_media(folder: Path, model, items: int, seconds: float, seed: int = 0) -> None:
    """``items`` synthetic files in the model's modality: noisy chirps (audio), textured
    images at twice the model's resolution, moving-gradient clips (video)."""
    from anytok.media import save_audio, save_image, save_video
    from anytok.pipeline import input_format

    fmt = input_format(model)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(items):
        if fmt.modality == "audio":
            n = int(seconds * fmt.sample_rate * rng.uniform(0.8, 1.2))  # lengths vary, as in life
            t = torch.arange(n) / fmt.sample_rate
            f0 = float(rng.uniform(100, 1000))
            wave = 0.5 * torch.sin(2 * torch.pi * f0 * t * (1 + t / 4)) + 0.05 * torch.randn(n)
            save_audio(
                folder / f"{i:06d}.flac",
                wave.clamp(-1, 1)[None].repeat(fmt.channels, 1),
                fmt.sample_rate,
            )
        elif fmt.modality == "image":
            h, w = (2 * s for s in fmt.resolution)
            y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            phase = float(rng.uniform(0, 6.28))
            image = torch.stack([torch.sin(4 * x + phase), torch.cos(3 * y - phase), x * y])
            save_image(
                folder / f"{i:06d}.png", (image + 0.1 * torch.randn_like(image)).clamp(-1, 1)
            )
        else:
            frames = max(2, int(seconds * fmt.fps))
            h, w = fmt.resolution
            y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            clip = torch.stack(
                [
                    torch.stack([torch.sin(4 * x + k / 5), torch.cos(3 * y - k / 7), x * y])
                    for k in range(frames)
                ],
                dim=1,
            )
            save_video(folder / f"{i:06d}.mp4", clip.clamp(-1, 1), fmt.fps)


def same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("shard-*.parquet"))
    return names == sorted(p.name for p in b.glob("shard-*.parquet")) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="seanet_fsq_24khz", help="registry name or checkpoint dir"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny variant of a registry name (smoke runs)"
    )
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio / video length per item")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument(
        "--device", default="auto", help="local: auto, cpu, cuda, cuda:0,cuda:1; ray: auto/cpu/cuda"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=8, help="local engine data-loading processes"
    )
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--actors", type=int, help="Ray encoder actors (default: one per GPU)")
    parser.add_argument(
        "--check-items", type=int, default=32, help="items for the batch-1 vs batch-N check"
    )
    parser.add_argument("--workdir", help="keep the data and shards here (default: a temp dir)")
    parser.add_argument("--out", help="also write a Markdown table here")
    args = parser.parse_args()

    import anytok
    from anytok.checkpoint import save_checkpoint
    from anytok.datasets import encode_dataset

    with tempfile.TemporaryDirectory(prefix="anytok-bench-") as tmp:
        work = Path(args.workdir or tmp)
        model_ref = args.model
        if args.tiny:  # a tiny model is not a registry tag: save it so Ray actors can load it
            model_ref = str(
                save_checkpoint(anytok.create_model(args.model, tiny=True), work / "ckpt")
            )
        model = anytok.load(model_ref)
        src = work / "media"
        if not src.exists():
            make_media(src, model, args.items, args.seconds)
        common = dict(batch_size=args.batch_size, shard_size=args.shard_size, devices=args.device)
        results, outputs = [], {}
        for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
            if engine == "ray":
                try:
                    import ray
                    import ray.data
                except ImportError:
                    print("ray is not installed: skipping the ray engine", file=sys.stderr)
                    continue
                # Start the local cluster outside the timing (a real job reuses a running
                # cluster); starting the actors and loading the model stay in it.
                if not ray.is_initialized():
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
            dst = work / f"out-{engine}"
            extra = {"workers": args.workers} if engine == "local" else {"actors": args.actors}
            summary = encode_dataset(
                src, dst, model_ref, engine=engine, progress=True, **common, **extra
            )
            outputs[engine] = dst
            results.append(
                {
                    "engine": engine,
                    "items": summary.items_this_run,
                    "elapsed_s": round(summary.elapsed, 3),
                    "items_per_s": round(summary.items_per_second, 2),
                    "tokens_per_s": round(summary.tokens_this_run / summary.elapsed, 1),
                    "x_realtime": round(summary.realtime_factor, 1),
                    "failed": summary.failed,
                }
            )
        # Determinism on this device: batch 1 vs batch N on a subset, and engine vs engine.
        subset = work / "subset"
        if not subset.exists():
            subset.mkdir()
            for path in sorted(src.iterdir())[: args.check_items]:
                (subset / path.name).symlink_to(path)
        one = encode_dataset(
            subset, work / "check-b1", model_ref, batch_size=1, workers=2, devices=args.device
        )
        many = encode_dataset(
            subset,
            work / "check-bn",
            model_ref,
            batch_size=args.batch_size,
            workers=2,
            devices=args.device,
        )
        checks = {
            "batch_1_equals_batch_n": same_shards(one.dst, many.dst),
        }
        if len(outputs) == 2:
            checks["local_equals_ray"] = same_shards(outputs["local"], outputs["ray"])

    device = "cpu"
    if torch.cuda.is_available() and args.device != "cpu":
        device = torch.cuda.get_device_name(0)
    report = {
        "model": args.model + (" (tiny)" if args.tiny else ""),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "items": args.items,
        "seconds_per_item": args.seconds if model.modality != "image" else None,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "results": results,
        "checks": checks,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        lines = [
            f"# encode-dataset throughput: {report['model']} on {device}",
            "",
            f"{args.items} items{'' if model.modality == 'image' else f' of ~{args.seconds:g} s'}, "
            f"batch {args.batch_size}, {args.workers} loader workers, torch {torch.__version__}",
            "",
            "| engine | items/s | tokens/s | x realtime | wall s |",
            "| --- | ---: | ---: | ---: | ---: |",
            *(
                f"| {r['engine']} | {r['items_per_s']} | {r['tokens_per_s']:,} | {r['x_realtime']} | {r['elapsed_s']} |"
                for r in results
            ),
            "",
            *(f"- {name}: {'yes' if ok else '**no**'}" for name, ok in checks.items()),
            "",
        ]
        Path(args.out).write_text("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
