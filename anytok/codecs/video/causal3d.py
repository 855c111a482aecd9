"""Causal3D: factorized causal 3D CNN video tokenizers at the published compressions of
Cosmos Tokenizer DV, VidTok and MAGVIT-v2.

Cosmos Tokenizer (NVIDIA 2025, https://arxiv.org/abs/2501.03575), VidTok (Tang et al. 2024,
https://arxiv.org/abs/2412.13061) and MAGVIT-v2 (Yu et al. 2023,
https://arxiv.org/abs/2310.05737) share the design anytok implements here:

* **causal in time, first frame alone**: a clip of ``1 + k * s_t`` frames gives ``1 + k``
  latent frames; an image is a one-frame video; long videos encode chunk by chunk with
  exactly the tokens of one pass (:meth:`~anytok.codecs.base.VideoTokenizer.encode_long`);
* **factorized convolutions**: each 3x3x3 conv is a spatial 1x3x3 conv followed by a
  temporal 3x1x1 causal conv (:class:`anytok.nn.causal3d.FactorizedConv3d`), no attention,
  per-frame GroupNorm: cheap at 256² and exact under temporal chunking;
* **discrete codes**: FSQ (64,000 codes as Cosmos DV, or 8^6 = 262,144 as VidTok's FSQ
  release) or LFQ (2^18 as MAGVIT-v2); any quantizer by name.

Registered: ``causal3d_4x8x8_fsq``, ``causal3d_8x8x8_fsq``, ``causal3d_4x16x16_fsq``,
``causal3d_4x8x8_lfq`` and ``causal3d_vidtok_4x8x8`` (VidTok's compression and codebook, the
throughput benchmark's comparison point).
"""

from __future__ import annotations

from typing import Any

from anytok.codecs.video.cnn3d_fsq import CNN3DFSQ
from anytok.registry import register


class Causal3D(CNN3DFSQ):
    """:class:`~anytok.codecs.video.cnn3d_fsq.CNN3DFSQ` with factorized (2+1)D convolutions by
    default; see the module docstring. Arguments as ``CNN3DFSQ``."""

    def __init__(self, *args: Any, factorized: bool = True, **kwargs: Any):
        super().__init__(*args, factorized=factorized, **kwargs)


_FSQ_64K = {"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]}
_BASE: dict[str, Any] = {
    "resolution": [256, 256],
    "fps": 24.0,
    "channels": 64,
    "num_res_blocks": 2,
}
_TINY: dict[str, Any] = {
    "resolution": [16, 16],
    "fps": 8.0,
    "channels": 4,
    "channel_multipliers": [1, 2],
    "temporal_downsample": [True],
    "num_res_blocks": 1,
    "latent_dim": 3,
    "quantizer": {"name": "fsq", "levels": [5, 5, 5]},
}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "causal3d_4x8x8_fsq": (
        "4x time, 8x space, FSQ 64,000 codes (Cosmos DV 4x8x8)",
        {
            "channel_multipliers": [1, 2, 2, 4],
            "temporal_downsample": [True, True, False],
            "latent_dim": 6,
            "quantizer": _FSQ_64K,
        },
    ),
    "causal3d_8x8x8_fsq": (
        "8x time, 8x space, FSQ 64,000 codes (Cosmos DV 8x8x8)",
        {
            "channel_multipliers": [1, 2, 2, 4],
            "temporal_downsample": [True, True, True],
            "latent_dim": 6,
            "quantizer": _FSQ_64K,
        },
    ),
    "causal3d_4x16x16_fsq": (
        "4x time, 16x space, FSQ 64,000 codes (Cosmos DV 8x16x16's spatial rate)",
        {
            "channel_multipliers": [1, 2, 2, 4, 4],
            "temporal_downsample": [True, True, False, False],
            "latent_dim": 6,
            "quantizer": _FSQ_64K,
        },
    ),
    "causal3d_4x8x8_lfq": (
        "4x time, 8x space, LFQ 2^18 codes (MAGVIT-v2)",
        {
            "channel_multipliers": [1, 2, 2, 4],
            "temporal_downsample": [True, True, False],
            "latent_dim": 18,
            "quantizer": {"name": "lfq", "codebook_size": 2**18},
        },
    ),
    "causal3d_vidtok_4x8x8": (
        "4x time, 8x space, FSQ 8^6 = 262,144 codes (VidTok's FSQ release)",
        {
            "channel_multipliers": [1, 2, 2, 4],
            "temporal_downsample": [True, True, False],
            "latent_dim": 6,
            "quantizer": {"name": "fsq", "levels": [8] * 6},
        },
    ),
}

for _name, (_what, _config) in VARIANTS.items():
    register(
        _name,
        modality="video",
        description=f"factorized causal 3D CNN, first frame alone: {_what}",
        paper="https://arxiv.org/abs/2501.03575 (Cosmos Tokenizer) + https://arxiv.org/abs/2412.13061 (VidTok)",
        default_config={**_BASE, **_config},
        tiny_config=_TINY
        if "lfq" not in _name
        else {**_TINY, "latent_dim": 6, "quantizer": {"name": "lfq", "codebook_size": 2**6}},
        builder=Causal3D,
    )
