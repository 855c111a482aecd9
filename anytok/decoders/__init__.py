"""Decoders that turn codes back into media beyond a tokenizer's own decoder.

* :mod:`anytok.decoders.gan`: discriminators and adversarial losses used to train codecs
  (MPD, MS-STFT, multi-band STFT, PatchGAN 2D/3D).
* ``anytok.decoders.diffusion`` (later): rectified-flow / diffusion decoders conditioned on
  codes. A tokenizer whose ``forward`` returns ``losses["diffusion"]`` is trained with that
  objective by :mod:`anytok.train` without further changes.
"""
