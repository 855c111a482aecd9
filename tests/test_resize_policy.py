"""How files of another size are fitted to a tokenizer: ``TokenSpec.resize``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anytok.media import MediaError, save_image
from anytok.pipeline import InputFormat, load_input
from anytok.tokens import RESIZE_POLICIES, TokenSpec


def _image(path: Path, h: int, w: int) -> Path:
    gen = torch.Generator().manual_seed(0)
    save_image(path, torch.rand(3, h, w, generator=gen) * 2 - 1)
    return path


def test_spec_round_trips_resize_and_rejects_unknown() -> None:
    for policy in (*RESIZE_POLICIES, None):
        spec = TokenSpec("image", [16], ("height", "width"), resolution=(32, 32), resize=policy)
        assert TokenSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="resize must be one of"):
        TokenSpec("image", [16], ("height", "width"), resize="stretch")
    # Token files written before the field existed still load.
    old = TokenSpec("image", [16], ("height", "width")).to_dict()
    del old["resize"]
    assert TokenSpec.from_dict(old).resize is None


def test_cover_crop_and_native(tmp_path: Path) -> None:
    path = _image(tmp_path / "wide.png", 50, 90)
    cover = load_input(InputFormat("image", resolution=(32, 32)), path)
    assert cover.shape == (3, 32, 32)
    native = load_input(
        InputFormat("image", resolution=(32, 32), resize="native", multiple=16), path
    )
    assert native.shape == (3, 48, 80)  # centre crop to multiples of 16, no resampling
    small = _image(tmp_path / "small.png", 8, 40)
    with pytest.raises(MediaError, match=r"small\.png.*smaller than the tokenizer's stride 16"):
        load_input(InputFormat("image", resolution=(32, 32), resize="native", multiple=16), small)


def test_models_report_their_policy() -> None:
    import anytok

    model = anytok.create_model("cnn_fsq_256", tiny=True)
    assert model.spec.resize == "cover_crop"


def test_native_size_folder_encodes_mixed_sizes_in_one_job(tmp_path: Path) -> None:
    import anytok
    from anytok.pipeline import encode_files
    from anytok.tokens import Tokens

    model = anytok.create_model("vqgan", tiny=True).eval()  # stride 4, native sizes
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "a.png", 32, 48)
    _image(folder / "b.png", 41, 20)  # cropped to 40x20
    _image(folder / "c.png", 32, 48)
    report = encode_files(model, [folder], tmp_path / "tokens", batch_size=3)
    assert not report.failures and report.items == 3
    shapes = {p.name.split(".")[0]: Tokens.load(p).codes.shape for p in sorted(report.written)}
    assert shapes == {"a": (1, 1, 8, 12), "b": (1, 1, 10, 5), "c": (1, 1, 8, 12)}
