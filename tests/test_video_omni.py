"""OmniTokenizer-style joint image-video tokenizer."""

from __future__ import annotations

import pytest
import torch

import anytok
from anytok.codecs.video.omni import SpaceTimeBlock


def model():
    return anytok.create_model("omni", tiny=True, seed=0).eval()


@pytest.mark.parametrize("frames,latent", [(1, 1), (5, 3), (9, 5)])
def test_shapes_for_any_clip_length(frames: int, latent: int) -> None:
    m = model()
    video = torch.rand(2, 3, frames, 16, 16) * 2 - 1
    tokens = m.encode(video)
    assert tokens.codes.shape == (2, 1, latent, 4, 4)
    assert m.decode(tokens).shape == (2, 3, 1 + (latent - 1) * 2, 16, 16)


def test_image_is_a_one_frame_video_and_the_first_latent_frame() -> None:
    m = model()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    image = video[:, :, 0]
    as_image = m.encode_image(image)
    assert torch.equal(as_image.codes, m.encode(image[:, :, None]).codes)
    assert torch.equal(as_image.codes, m.encode(image).codes)
    assert torch.equal(m.encode(video).codes[:, :, :1], as_image.codes)
    assert m.decode_image(as_image).shape == image.shape


def test_causal_in_time() -> None:
    m = model()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    base = m.encode(video).codes
    changed = video.clone()
    changed[:, :, 5:] = torch.rand_like(changed[:, :, 5:])  # frames of latent frames 3 and 4
    after = m.encode(changed).codes
    assert torch.equal(after[:, :, :3], base[:, :, :3])
    assert not torch.equal(after[:, :, 3:], base[:, :, 3:])


def test_window_attention_equals_full_attention_when_the_window_covers_the_frame() -> None:
    torch.manual_seed(0)
    block = SpaceTimeBlock(16, 2, window=4).eval()
    x = torch.randn(2, 1, 4, 4, 16)
    windowed = block(x)
    full = block.spatial(x.reshape(2, 16, 16)).reshape(2, 1, 4, 4, 16)
    assert torch.allclose(
        windowed, block.temporal(full.reshape(32, 1, 16)).reshape(2, 1, 4, 4, 16), atol=1e-6
    )
    with pytest.raises(ValueError, match="not a multiple of the attention window"):
        SpaceTimeBlock(16, 2, window=3)(torch.randn(1, 1, 4, 4, 16))
