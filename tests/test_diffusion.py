"""The diffusion-decoder package: samplers, seeds, guidance, objectives, training, REPA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anytok.decoders.diffusion import SCHEDULERS, FlowDecoder, make_scheduler

FLOW_SAMPLERS = [name for name, (objectives, _) in SCHEDULERS.items() if "flow" in objectives]


def tiny(**kwargs) -> FlowDecoder:
    torch.manual_seed(0)
    args = dict(dim=32, depth=2, heads=4, extra_cond_dim=5, num_classes=3)
    args.update(kwargs)
    return FlowDecoder(6, 8, **args)


def conditions() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "cond": torch.randn(2, 4, 8, generator=gen),
        "cond_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool(),
        "extra": torch.randn(2, 3, 5, generator=gen),
        "labels": torch.tensor([0, 2]),
    }


@pytest.mark.parametrize("conditioning", ["cross", "in_context"])
@pytest.mark.parametrize(
    "objective,scheduler",
    [*[("flow", s) for s in FLOW_SAMPLERS], ("epsilon", "ddim"), ("v", "dpm++"), ("v", "unipc")],
)
def test_every_sampler_gives_finite_samples_of_the_right_shape(
    conditioning: str, objective: str, scheduler: str
) -> None:
    model = tiny(conditioning=conditioning, objective=objective).eval()
    # Train one step so the zero-initialised output layer predicts something.
    model.train()
    model.loss(torch.randn(2, 12, 6), grid=(3, 4), **conditions()).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.eval()
    out = model.sample(
        grid=(3, 4), steps=4, guidance_scale=2.0, scheduler=scheduler, **conditions()
    )
    assert out.shape == (2, 12, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("scheduler", FLOW_SAMPLERS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_samplers_reach_the_exact_solution_of_a_known_field(
    scheduler: str, shift: float
) -> None:
    """For a point-mass target x0 = mu the velocity is (x - mu) / t: every sampler must land
    on mu, which checks the time convention against diffusers' sigmas."""
    mu = torch.randn(1, 5, 6)
    model = tiny(time_shift=shift).eval()
    model.velocity = lambda x, t, conds, grid, return_hidden=False: (x - mu) / t.view(-1, 1, 1)  # type: ignore[method-assign]
    out = model.sample(torch.randn(1, 2, 8), num_positions=5, steps=6, scheduler=scheduler)
    assert torch.allclose(out, mu, atol=5e-3)


def test_seed_reproduces_and_differs() -> None:
    model = tiny().eval()
    torch.nn.init.normal_(model.out_proj.weight, std=0.1)
    c = conditions()
    a = model.sample(num_positions=7, steps=3, seed=5, **c)
    b = model.sample(num_positions=7, steps=3, seed=5, **c)
    other = model.sample(num_positions=7, steps=3, seed=6, **c)
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)
    # The seed is one (n, target_dim) draw that every item starts from ...
    shared = torch.randn(7, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.sample(num_positions=7, steps=3, noise=shared.repeat(2, 1, 1), **c), a)
    # ... so each item samples what it samples alone; a generator draws for the whole batch.
    for i in range(2):
        alone = model.sample(
            num_positions=7, steps=3, seed=5, **{k: v[i : i + 1] for k, v in c.items()}
        )
        assert torch.allclose(alone[0], a[i], atol=1e-5)
    gen = torch.Generator().manual_seed(5)
    batch_noise = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(5))
    drawn = model.sample(num_positions=7, steps=3, generator=gen, **c)
    assert torch.equal(drawn, model.sample(num_positions=7, steps=3, noise=batch_noise, **c))


def test_guidance_scale_one_is_the_unguided_path() -> None:
    model = tiny().eval()
    torch.nn.init.normal_(model.out_proj.weight, std=0.1)
    c = conditions()
    calls: list[int] = []
    velocity = model.velocity

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return velocity(x, *args, **kwargs)

    model.velocity = counting  # type: ignore[method-assign]
    unguided = model.sample(num_positions=7, steps=3, guidance_scale=1.0, **c)
    assert calls == [2, 2, 2]  # conditional batch only
    calls.clear()
    nearly = model.sample(num_positions=7, steps=3, guidance_scale=1.0 + 1e-6, **c)
    assert calls == [4, 4, 4]  # conditional + unconditional in one batch
    assert torch.allclose(unguided, nearly, atol=1e-4)
    guided = model.sample(num_positions=7, steps=3, guidance_scale=4.0, **c)
    assert not torch.allclose(unguided, guided, atol=1e-3)


def test_conditions_change_the_output() -> None:
    model = tiny().eval()
    torch.nn.init.normal_(model.out_proj.weight, std=0.1)
    for block in model.transformer.blocks:  # open the zero-initialised gates
        torch.nn.init.normal_(block.modulation[1].weight, std=0.1)
    c = conditions()
    base = model.sample(num_positions=7, steps=2, **c)
    for key in ("cond", "extra"):
        changed = dict(c, **{key: torch.randn_like(c[key])})
        assert not torch.allclose(model.sample(num_positions=7, steps=2, **changed), base)
    relabelled = dict(c, labels=torch.tensor([1, 1]))
    assert not torch.allclose(model.sample(num_positions=7, steps=2, **relabelled), base)


@pytest.mark.parametrize("conditioning", ["cross", "in_context"])
def test_flow_loss_falls_on_a_conditional_task(conditioning: str) -> None:
    """Targets are a fixed linear map of the condition: the loss must fall >= 30%."""
    torch.manual_seed(0)
    model = FlowDecoder(4, 8, dim=32, depth=2, heads=4, conditioning=conditioning, cond_dropout=0.0)
    mapping = torch.randn(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        cond = torch.randn(16, 3, 8)
        target = (cond @ mapping).repeat(1, 2, 1)  # (16, 6, 4)
        loss = model.loss(target, cond).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last <= 0.7 * first, (first, last)


def test_target_mask_excludes_padding() -> None:
    model = tiny(cond_dropout=0.0)
    c = conditions()
    target = torch.randn(2, 8, 6)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    torch.manual_seed(3)
    a = model.loss(target, c["cond"], target_mask=mask).loss
    target[0, 5:] = 1e3  # huge values in the padding
    torch.manual_seed(3)
    b = model.loss(target, c["cond"], target_mask=mask).loss
    assert torch.allclose(a, b, rtol=1e-4)


def test_repa_term_with_a_random_local_teacher(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=4,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "teacher")
    model = tiny(repa={"teacher": tmp_path / "teacher", "weight": 0.5, "layer": 0})
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model.loss(torch.randn(2, 16, 6), conditions()["cond"], grid=(4, 4), repa_input=images)
    assert "diffusion/repa" in out.metrics and torch.isfinite(out.metrics["diffusion/repa"])
    out.loss.backward()
    assert model.repa is not None and model.repa.projector[0].weight.grad is not None
    assert not any("teacher" in k for k in model.state_dict())


def test_repa_is_skipped_in_eval_mode(tmp_path: Path) -> None:
    """Validation (eval mode) added the REPA term to the loss and loaded the teacher."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=4,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "teacher")
    model = tiny(repa={"teacher": tmp_path / "teacher", "weight": 0.5, "layer": 0}).eval()
    target, cond = torch.randn(2, 16, 6), conditions()["cond"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(0)
        out = model.loss(target, cond, grid=(4, 4), repa_input=images)
        torch.manual_seed(0)
        plain = model.loss(target, cond, grid=(4, 4))
    assert out.metrics == {} and torch.equal(out.loss, plain.loss)
    assert model.repa is not None and model.repa.teacher._model is None  # never loaded


def test_bad_arguments_have_clear_errors() -> None:
    model = tiny().eval()
    c = conditions()
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        model.sample(num_positions=4, scheduler="nope", **c)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.sample(num_positions=4, steps=0, **c)
    with pytest.raises(ValueError, match=r"cond must be \(batch, positions, 8\)"):
        model.sample(torch.randn(2, 4, 3), num_positions=4)
    with pytest.raises(ValueError, match="grid .* holds 6 positions"):
        model.loss(torch.randn(2, 8, 6), c["cond"], grid=(2, 3))
    with pytest.raises(ValueError, match="does not sample the 'epsilon' objective"):
        make_scheduler("euler", "epsilon")
    with pytest.raises(ValueError, match="conditioning must be one of"):
        FlowDecoder(4, 4, conditioning="film")
    with pytest.raises(ValueError, match="time_shift applies to objective='flow' only"):
        FlowDecoder(4, 4, objective="epsilon", time_shift=3.0)
    with pytest.raises(ValueError, match="time_sampling applies to objective='flow' only"):
        FlowDecoder(4, 4, objective="v", time_sampling="uniform")


def _trained_looking(**kwargs) -> FlowDecoder:
    """A tiny decoder with no zero gates, so every input moves its output."""
    model = tiny(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.3)
        torch.nn.init.normal_(model.null_cond, std=1.0)
        if model.null_extra is not None:
            torch.nn.init.normal_(model.null_extra, std=1.0)
    return model


@pytest.mark.parametrize("conditioning", ["cross", "in_context"])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_guided_sample_of_an_item_does_not_depend_on_its_batch_padding(
    conditioning: str, guidance: float
) -> None:
    """A dropped condition (the unconditional branch) is one null token whatever the padded
    length; it used to make every padded position a visible null token, so a padded item's
    guided sample moved by ~2 with the batch's padding."""
    model = _trained_looking(conditioning=conditioning)
    gen = torch.Generator().manual_seed(1)
    cond, text = torch.randn(1, 2, 8, generator=gen), torch.randn(1, 3, 5, generator=gen)
    padded = torch.cat([cond, torch.randn(1, 6, 8, generator=gen)], dim=1)
    padded_text = torch.cat([text, torch.randn(1, 4, 5, generator=gen)], dim=1)
    args = dict(num_positions=5, steps=3, guidance_scale=guidance, seed=0)
    alone = model.sample(cond, extra=text, **args)
    batched = model.sample(
        padded,
        cond_mask=torch.tensor([[True] * 2 + [False] * 6]),
        extra=padded_text,
        extra_mask=torch.tensor([[True] * 3 + [False] * 4]),
        **args,
    )
    assert (batched - alone).abs().max() < 1e-4


def test_in_context_decoder_with_a_text_slot_runs_without_text() -> None:
    """In-context conditioning with ``extra_cond_dim`` cross-attends only the text: absent
    text is the null text, as when dropped (it raised "cross-attention needs a context")."""
    model = _trained_looking(conditioning="in_context", num_classes=None)
    cond = torch.randn(2, 4, 8)
    model.train()
    model.loss(torch.randn(2, 5, 6), cond).loss.backward()
    model.eval()
    out = model.sample(cond, num_positions=5, steps=2, guidance_scale=2.0)
    assert out.shape == (2, 5, 6) and torch.isfinite(out).all()
    # no text == the null text: the same as a text the guidance branch dropped
    drop = torch.ones(2, dtype=torch.bool)
    none = model._conditions(cond, None, None, None, None, None, None, None)
    dropped = model._conditions(cond, None, torch.randn(2, 3, 5), None, None, None, drop, None)
    t = torch.full((2,), 0.5)
    x = torch.randn(2, 5, 6)
    assert torch.allclose(
        model.velocity(x, t, none, (5,)), model.velocity(x, t, dropped, (5,)), atol=1e-5
    )


def test_a_bf16_decoder_samples_from_fp32_conditions() -> None:
    """Quantizers return fp32 codes; a bf16-cast decoder outside autocast used to fail on a
    dtype mismatch in the condition projection."""
    model = tiny().eval().to(torch.bfloat16)
    c = conditions()
    out = model.sample(num_positions=4, steps=2, guidance_scale=2.0, **c)
    reference = model.sample(
        num_positions=4,
        steps=2,
        guidance_scale=2.0,
        **{**c, "cond": c["cond"].bfloat16(), "extra": c["extra"].bfloat16()},
    )
    assert torch.equal(out, reference)
