"""Regression tests from an audit of the training side: validation must not steer training,
recipe weights that would be ignored are errors, the discriminator never sees the padding
the reconstruction terms ignore, and the MS-STFT discriminator is EnCodec's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anytok.data.synthetic import make_dataset
from anytok.train import RecipeError, load_recipe, scalar_history, train
from anytok.train import loop as train_loop

ROOT = Path(__file__).resolve().parents[1]
SEANET = ROOT / "recipes/audio/seanet_fsq_24khz_tiny.yaml"
TADICODEC = ROOT / "recipes/audio/tadicodec_tiny.yaml"  # a diffusion decoder: draws noise


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(data: Path, steps: int) -> list[str]:
    return [
        f"data.train={data}",
        f"train.steps={steps}",
        "train.batch_size=2",
        "log.every=1",
        "log.samples_every=0",
        "log.progress=false",
        "checkpoint.every=0",
        "checkpoint.final=false",
    ]


def test_validation_and_samples_do_not_change_the_training_run(tmp_path: Path) -> None:
    # A diffusion decoder's validation loss draws times and noise. They used to come from the
    # training RNG, so log.val_every changed the run (and a run stopped at a validation step,
    # which skips it, did not resume bit for bit).
    data = tmp_path / "data"
    make_dataset("audio", data, 10, seconds=0.3)
    common = [*quiet(data, 3), "data.val_fraction=0.3", "log.val_batches=1"]
    train(TADICODEC, tmp_path / "plain", overrides=[*common, "log.val_every=0"], device="cpu")
    train(
        TADICODEC,
        tmp_path / "validated",
        overrides=[*common, "log.val_every=1", "log.samples_every=1", "log.num_samples=1"],
        device="cpu",
    )
    assert scalar_history(tmp_path / "validated", "val/diffusion")  # it did validate
    for key in ("loss/total", "loss/diffusion", "grad_norm/generator"):
        plain = scalar_history(tmp_path / "plain", key)
        validated = scalar_history(tmp_path / "validated", key)
        assert len(plain) == 3 and validated == plain, key


def test_a_misspelled_aux_loss_name_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset("audio", data, 6, seconds=0.2)
    overrides = [*quiet(data, 1), "log.val_every=0", "loss.aux={quantiser: 2.0}"]
    with pytest.raises(RecipeError, match=r"loss\.aux: quantiser .*\(quantizer\)"):
        train(SEANET, tmp_path / "run", overrides=overrides, device="cpu")


@pytest.mark.parametrize("term", ["adversarial", "feature_matching"])
def test_a_gan_weight_without_a_discriminator_is_an_error(term: str) -> None:
    base = ["data.train=/data", "discriminator.networks=[]", "loss.adversarial=0"]
    base.append("loss.feature_matching=0")
    load_recipe(SEANET, base)  # no GAN at all: fine
    with pytest.raises(RecipeError, match=f"loss.{term}: needs a discriminator"):
        load_recipe(SEANET, [*base, f"loss.{term}=1.0"])


def test_the_discriminator_never_sees_the_padding(tmp_path: Path, monkeypatch) -> None:
    # Short files (0.05 s) batched with long ones (0.1 s segments): the short items are half
    # padding. The reconstruction terms ignore what the model puts there; the discriminator
    # used to see it (real items hold zeros there), so it could tell fakes by their padding
    # and the generator was trained on it.
    data = tmp_path / "data"
    make_dataset("audio", data / "short", 3, seconds=0.05, seed=1)
    make_dataset("audio", data / "long", 3, seconds=0.3, seed=2)
    seen: list[torch.Tensor] = []
    build = train_loop.build_discriminator

    def recording_build(*args, **kwargs):
        disc = build(*args, **kwargs)
        disc.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
        return disc

    monkeypatch.setattr(train_loop, "build_discriminator", recording_build)
    overrides = [
        *quiet(data, 2),
        "train.batch_size=6",
        "data.val_fraction=0",
        "log.val_every=0",
        "discriminator.start_step=0",
    ]
    train(SEANET, tmp_path / "run", overrides=overrides, device="cpu")
    # per step: the fake (generator loss), the real (feature matching), real + fake (D update)
    assert len(seen) == 6
    half = round(0.05 * 24000)
    for fake, real, both in zip(seen[0::3], seen[1::3], seen[2::3]):
        assert torch.equal(both, torch.cat([real, fake]))
        padded = real[..., half:].abs().flatten(1).amax(dim=1) == 0
        assert padded.sum() == 3  # the short items
        assert fake[~padded, :, half:].abs().amax() > 0  # long items keep their tails
        assert torch.equal(fake[padded, :, half:], torch.zeros_like(fake[padded, :, half:]))
        assert fake[padded, :, :half].abs().amax() > 0


def test_ms_stft_discriminator_is_encodecs() -> None:
    encodec = pytest.importorskip("encodec.msstftd")
    from anytok.decoders.gan import MultiScaleSTFTDiscriminator

    n_ffts = [1024, 2048, 512, 256, 128]
    torch.manual_seed(0)
    ref = encodec.MultiScaleSTFTDiscriminator(
        filters=4,
        in_channels=2,
        n_ffts=n_ffts,
        hop_lengths=[n // 4 for n in n_ffts],
        win_lengths=n_ffts,
    )
    ours = MultiScaleSTFTDiscriminator(channels=2, n_ffts=n_ffts, filters=4)
    for theirs, mine in zip(ref.discriminators, ours.discriminators):
        for a, b in zip([*theirs.convs, theirs.conv_post], [*mine.convs, mine.post]):
            weight = a.conv.weight.detach()  # EnCodec's first conv has no weight norm
            with torch.no_grad():
                b.parametrizations.weight.original0.copy_(
                    weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                )
                b.parametrizations.weight.original1.copy_(weight)
                b.bias.copy_(a.conv.bias)
    audio = 0.3 * torch.randn(2, 2, 6000)
    logits, features = ref(audio)
    out = ours(audio)
    for want, got in zip(logits, out.logits, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for want_maps, got_maps in zip(features, out.features, strict=True):
        for want, got in zip(want_maps, got_maps, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- recipes, run dirs


def test_an_override_that_renames_a_component_replaces_it() -> None:
    """``model.config.quantizer={name: fsq, ...}`` over a VQ quantizer kept the VQ's
    ``codebook_size`` (a deep merge), and FSQ's constructor failed; a mapping of the same
    name still merges key by key."""
    recipe = ROOT / "recipes/image/vqgan_tiny.yaml"
    base = load_recipe(recipe, ["data.train=x"]).model.config.quantizer
    assert base.name != "fsq" and "codebook_size" in base
    swapped = load_recipe(
        recipe, ["data.train=x", "model.config.quantizer={name: fsq, levels: [8, 5, 5]}"]
    )
    assert dict(swapped.model.config.quantizer) == {"name": "fsq", "levels": [8, 5, 5]}
    tuned = load_recipe(
        recipe, ["data.train=x", f"model.config.quantizer={{name: {base.name}, decay: 0.5}}"]
    )
    assert tuned.model.config.quantizer.decay == 0.5
    assert tuned.model.config.quantizer.codebook_size == base.codebook_size


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.min_lr_ratio=-1", r"optimizer\.min_lr_ratio: must be in \[0, 1\]"),
        ("optimizer.clip_grad_norm=-1", r"optimizer\.clip_grad_norm: must be positive, or null"),
        ("data.num_workers=-1", r"data\.num_workers: must be >= 0"),
        ("data.max_attempts=0", r"data\.max_attempts: must be >= 1"),
        ("data.augment.scale=[0.5,1.0]", r"data\.augment\.scale: must be \[low, high\] with 1"),
    ],
)
def test_values_that_would_invert_training_are_refused(override: str, message: str) -> None:
    """A negative rate floor or clipping norm ran gradient ascent with exit 0."""
    with pytest.raises(RecipeError, match=message):
        load_recipe(SEANET, ["data.train=x", override])


def test_a_typo_in_a_free_form_setting_names_its_section_and_locks_nothing(
    tmp_path: Path,
) -> None:
    """Keyword typos inside ``model.config`` / ``discriminator.networks`` / ``optimizer.kwargs``
    were tracebacks; and the failed start's empty log made the corrected command refuse the
    folder ("already holds a run")."""
    data = tmp_path / "data"
    make_dataset("audio", data, 6, seconds=0.2)
    run = tmp_path / "run"
    base = [*quiet(data, 1), "log.val_every=0"]
    for override, message in [
        ("model.config.n_filterz=8", r"model.config: .*no argument n_filterz \(did you mean n_filters\?\)"),
        ("optimizer.kwargs={foo: 1}", "optimizer: .*unexpected keyword argument"),
    ]:  # fmt: skip
        with pytest.raises(RecipeError, match=rf"^{message}"):
            train(SEANET, run, overrides=[*base, override], device="cpu")
    assert not (run / "recipe.yaml").exists()  # written only once the run is set up
    assert train(SEANET, run, overrides=base, device="cpu").step == 1
    with pytest.raises(RecipeError, match="already holds a run; pass --resume"):
        train(SEANET, run, overrides=base, device="cpu")


def test_resume_refuses_another_schedule_or_architecture_and_keeps_the_recipe(
    tmp_path: Path,
) -> None:
    """Resuming with more steps kept the checkpoint's cosine schedule (the rate climbed back
    to its peak); another architecture was a size-mismatch traceback after recipe.yaml had
    already been overwritten."""
    from anytok.checkpoint import CheckpointError

    data = tmp_path / "data"
    make_dataset("audio", data, 6, seconds=0.2)
    run = tmp_path / "run"
    base = [*quiet(data, 2), "log.val_every=0", "checkpoint.final=true"]
    train(SEANET, run, overrides=base, device="cpu")
    recipe = (run / "recipe.yaml").read_text()
    with pytest.raises(
        RecipeError, match=r"another learning-rate schedule \(train\.steps 2 -> 4\)"
    ):
        train(SEANET, run, overrides=[*base, "train.steps=4"], device="cpu", resume=True)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not fit the model"):
        train(SEANET, run, overrides=[*base, "model.config.n_filters=8"], device="cpu", resume=True)
    assert (run / "recipe.yaml").read_text() == recipe


def test_bad_validation_files_are_named(tmp_path: Path) -> None:
    """Bad files in the validation split were counted (val/bad_files) but never named."""
    from anytok.train import read_log

    data = tmp_path / "data"
    make_dataset("audio", data, 8, seconds=0.2)
    for i in range(6):
        (data / f"zz_bad{i}.wav").write_bytes(b"not audio at all" * 8)
    overrides = [*quiet(data, 1), "data.val_fraction=0.5", "log.val_every=1", "log.val_batches=4"]
    train(SEANET, tmp_path / "run", overrides=overrides, device="cpu")
    records = read_log(tmp_path / "run")
    counted = sum(r.get("val/bad_files", 0) for r in records)
    named = [r["file"] for r in records if r.get("event") == "bad_file" and r.get("split") == "val"]
    assert counted > 0 and len(named) == counted and all("zz_bad" in f for f in named)


def test_fused_optimizer_kwargs_are_kept_and_torch_refusals_name_the_section() -> None:
    """``optimizer.kwargs={fused: true}`` was refused (anytok forced ``foreach=True``, which
    torch refuses with ``fused``) as a bare RuntimeError."""
    base = ["data.train=unused"]
    params = [("w", torch.nn.Parameter(torch.zeros(3)))]
    cfg = load_recipe(SEANET, [*base, "optimizer.kwargs={fused: true}"])
    built = train_loop._built("optimizer", lambda: train_loop._optimizer(params, cfg.optimizer))
    assert built.defaults["fused"] is True and not built.defaults["foreach"]
    plain = load_recipe(SEANET, base)
    built = train_loop._built("optimizer", lambda: train_loop._optimizer(params, plain.optimizer))
    assert built.defaults["foreach"] is True  # still the default without fused
    both = load_recipe(SEANET, [*base, "optimizer.kwargs={fused: true, foreach: true}"])
    with pytest.raises(RecipeError, match=r"^optimizer: .*fused.*foreach"):
        train_loop._built("optimizer", lambda: train_loop._optimizer(params, both.optimizer))


def test_no_decay_groups_follow_titok_and_keep_exempt_parameters_undecayed() -> None:
    # TiTok's optimizer keeps gains, biases, learned tokens and position embeddings out of
    # weight decay; the recipe names ours. AdamW's decoupled decay then shrinks only the rest.
    from anytok.registry import create_model

    recipe = load_recipe(
        Path(__file__).resolve().parents[1] / "recipes/image/titok.yaml", ["data.train=/x"]
    )
    no_decay = list(recipe.optimizer.no_decay)
    model = create_model("titok_s128", tiny=True)
    decayed, exempt = train_loop.decay_groups(model.named_parameters(), 0.5, no_decay)
    assert decayed["weight_decay"] == 0.5 and exempt["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert {"latent_tokens", "mask_token", "patch_pos", "patch_embed.weight"} <= exempt_names
    assert all(names[id(p)].endswith("bias") is False for p in decayed["params"])
    assert "encoder.blocks.0.attn.to_q.weight" not in exempt_names
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    # One AdamW step on zero gradients: decay moves the decayed weights only.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    strong = recipe.optimizer.copy()  # the recipe's 1e-4 x 1e-4 shrink is below fp32 steps
    strong.lr, strong.weight_decay = 0.1, 0.5
    optimizer = train_loop._optimizer(model.named_parameters(), strong)
    optimizer.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n not in exempt_names) or bool((before[n] == 0).all()), n
    # Without no_decay: one group, as before (saved optimizer states still load).
    assert len(train_loop.decay_groups(model.named_parameters(), 0.1, [])) == 1
    bad = recipe.optimizer.copy()
    bad.no_decay = [""]
    with pytest.raises(ValueError, match="no_decay entries"):
        train_loop._optimizer(model.named_parameters(), bad)


def test_training_on_other_media_says_what_the_folder_holds(tmp_path: Path) -> None:
    make_dataset("image", tmp_path / "pictures", 2)
    with pytest.raises(
        RecipeError,
        match=r"data\.train: no audio files in .* \(found 2 image files \(\.png\) instead: "
        r"an audio tokenizer reads audio files only\)",
    ):
        train(SEANET, tmp_path / "run", overrides=quiet(tmp_path / "pictures", 1))
