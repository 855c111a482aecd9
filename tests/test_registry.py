"""Registry names, resolution, weight lookup errors, and checkpoint strictness."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import anytok
from anytok.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anytok.registry import (
    PretrainedCfg,
    UnknownModelError,
    WeightsNotFoundError,
    get_arch,
    register,
    resolve,
)

REPO = Path(__file__).resolve().parents[1]


def test_list_models_by_modality() -> None:
    everything = anytok.list_models()
    assert everything == sorted(everything)
    for modality in ("audio", "image", "video"):
        names = anytok.list_models(modality)
        assert names, f"no {modality} tokenizer registered"
        assert all(get_arch(n).modality == modality for n in names)
    assert set(everything) == {
        n for m in ("audio", "image", "video") for n in anytok.list_models(m)
    }
    tags = anytok.list_models(tags=True)
    assert all("." in t for t in tags)
    with pytest.raises(ValueError, match="modality"):
        anytok.list_models("smell")


def test_resolve_default_and_explicit_tag() -> None:
    name = anytok.DEFAULT_MODELS["audio"]
    info, cfg = resolve(name)
    assert cfg.tag == info.default_tag
    _, cfg = resolve(f"{name}.untrained")
    assert cfg.tag == "untrained" and not cfg.trained
    with pytest.raises(UnknownModelError, match="no checkpoint tagged 'nope'"):
        resolve(f"{name}.nope")


def test_unknown_model_error_is_readable() -> None:
    with pytest.raises(UnknownModelError) as err:
        anytok.load("definitely_not_a_model")
    assert "definitely_not_a_model" in str(err.value)
    assert "anytok list" in str(err.value)


def _register_with_weights(tmp_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``tmp_name`` for one test: into a copy of the registry that the monkeypatch
    restores (another test in this worker then lists only the real architectures)."""
    import anytok.registry

    monkeypatch.setattr(anytok.registry, "_ARCHS", dict(anytok.registry._ARCHS))
    info = get_arch(anytok.DEFAULT_MODELS["image"])
    register(
        tmp_name,
        modality="image",
        description="test arch with a missing checkpoint",
        paper="test",
        default_config=info.config(tiny=True),
        pretrained=[PretrainedCfg("trained", hf_hub_id="anytok-test/does-not-exist")],
        builder=info.builder,
    )


def test_missing_weights_offline_names_places_and_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ANYTOK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _register_with_weights("test_missing_weights", monkeypatch)
    with pytest.raises(WeightsNotFoundError) as err:
        anytok.load("test_missing_weights")
    text = str(err.value)
    assert "test_missing_weights.trained" in text
    assert str(tmp_path / "home" / "checkpoints" / "test_missing_weights.trained") in text
    assert "Hugging Face cache" in text and "offline" in text
    assert "To fix" in text and "untrained" in text


def test_weights_found_in_local_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ANYTOK_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _register_with_weights("test_local_weights", monkeypatch)
    model = anytok.create_model("test_local_weights", seed=7)
    save_checkpoint(model, tmp_path / "checkpoints" / "test_local_weights.trained")
    loaded = anytok.load("test_local_weights")
    assert loaded.anytok_tag == "trained"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_hf_hub_checkpoint_from_the_cache_and_an_offline_miss(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants

    # An anytok checkpoint in a Hugging Face cache, laid out as huggingface_hub lays it out.
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--org--tiny-codec"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    model = anytok.create_model(anytok.DEFAULT_MODELS["audio"], tiny=True, seed=3)
    save_checkpoint(model, repo / "snapshots" / revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ANYTOK_OFFLINE", "1")
    loaded = anytok.load("hf-hub:org/tiny-codec")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # A miss offline says so in anytok's words, not huggingface_hub's keyword advice.
    with pytest.raises(WeightsNotFoundError) as err:
        anytok.load("hf-hub:org/absent")
    text = str(err.value)
    assert "org/absent is not in the Hugging Face cache" in text and "offline" in text
    assert "local_files_only" not in text


def test_hf_hub_tokens_name_the_hub_id_not_the_cache_folder(monkeypatch, tmp_path) -> None:
    """Token files of a Hub checkpoint name "hf-hub:org/name", loadable on any machine; the
    cache snapshot they were read from is of this machine only (and may be cleaned)."""
    import huggingface_hub.constants

    from anytok.cli import _checkpoint_details

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--org--tiny-codec"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    save_checkpoint(
        anytok.create_model("seanet_fsq_24khz", tiny=True), repo / "snapshots" / revision
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ANYTOK_OFFLINE", "1")
    model = anytok.load("hf-hub:org/tiny-codec")
    assert model.registry_name == "hf-hub:org/tiny-codec"
    with torch.inference_mode():
        tokens = model.encode(torch.rand(1, 1, 800) - 0.5)
    assert tokens.spec.name == "hf-hub:org/tiny-codec"
    assert anytok.load(tokens.spec.name).registry_name == "hf-hub:org/tiny-codec"
    # `anytok info` still reads the snapshot's config.json
    assert _checkpoint_details("hf-hub:org/tiny-codec")["architecture"] == "seanet_fsq_24khz"
    # A folder keeps its resolved path.
    folder = load_checkpoint(repo / "snapshots" / revision)
    assert folder.registry_name == str((repo / "snapshots" / revision).resolve())


def test_load_refuses_a_device_this_machine_lacks_before_loading(monkeypatch) -> None:
    from anytok.devices import DeviceError

    with pytest.raises(DeviceError, match="^device 'gpu': not a device"):
        anytok.load("no_such_model_either", device="gpu")  # the device is checked first
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        anytok.load(anytok.DEFAULT_MODELS["audio"], device="cuda")
    model = anytok.load(anytok.DEFAULT_MODELS["audio"], device="auto")
    assert next(model.parameters()).device == torch.device("cpu")


def test_load_device_and_dtype() -> None:
    """bf16 / fp16 / fp32 by dtype or name; fp64 (which 27 of 33 families could not run:
    quantizers compute in fp32 and autocast has no fp64) and other names are refused."""
    name = anytok.DEFAULT_MODELS["audio"] + ".untrained"
    model = anytok.load(name, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not model.training
    for text, dtype in [("bf16", torch.bfloat16), ("float16", torch.float16), ("fp32", None)]:
        model = anytok.load(name, dtype=text)
        assert next(model.parameters()).dtype == (dtype or torch.float32)
    for bad in (torch.float64, "float64", "int8", torch.int32):
        with pytest.raises(ValueError, match=r"dtype: expected float32, bfloat16 or float16"):
            anytok.load(name, dtype=bad)


def test_create_model_is_deterministic_per_seed() -> None:
    name = anytok.list_models("image")[0]
    a = anytok.create_model(name, tiny=True, seed=3).state_dict()
    b = anytok.create_model(name, tiny=True, seed=3).state_dict()
    c = anytok.create_model(name, tiny=True, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_strict_loading_lists_missing_and_unexpected_keys(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    model = anytok.create_model(anytok.list_models("image")[0], tiny=True)
    save_checkpoint(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    removed = sorted(state)[0]
    del state[removed]
    state["bogus.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert f"missing keys: {removed}" in str(err.value)
    assert "unexpected keys: bogus.weight" in str(err.value)


class _Tied(torch.nn.Module):
    """An embedding tied to an output layer, a shared buffer, a frozen parameter, an int64
    buffer, and a buffer computed at build time (not in the state dict)."""

    def __init__(self, needs_values: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight
        self.norm = torch.nn.LayerNorm(4)
        self.norm.weight.requires_grad_(False)
        self.register_buffer("table", torch.arange(6.0))
        self.norm.register_buffer("table", self.table)
        self.register_buffer("window", torch.hann_window(8), persistent=False)
        self.register_buffer("steps", torch.tensor([3, 5]))  # int64
        if needs_values:  # a builder that reads a parameter's value: no meta build
            self.scale = float(self.norm.bias.detach().sum())


@pytest.mark.parametrize("needs_values", [False, True], ids=["meta-build", "fallback"])
def test_build_loaded_keeps_ties_frozen_flags_and_model_dtypes(tmp_path, needs_values) -> None:
    from safetensors.torch import load_file, save_model

    from anytok.checkpoint import build_loaded

    torch.manual_seed(0)
    source = _Tied()
    with torch.no_grad():
        source.table.add_(1.0)
    save_model(source, str(tmp_path / "w.safetensors"))  # drops the tied duplicates
    state = load_file(str(tmp_path / "w.safetensors"))
    assert len(state) < len(source.state_dict())
    # a bf16 export, whose writer kept its integers in int32
    narrower = {True: torch.bfloat16, False: torch.int32}
    state = {k: v.to(narrower[v.is_floating_point()]) for k, v in state.items()}
    model = build_loaded(lambda: _Tied(needs_values), state, "w.safetensors")
    assert model.out.weight is model.embed.weight and model.norm.table is model.table
    assert not model.norm.weight.requires_grad and model.norm.bias.requires_grad
    for key, value in source.state_dict().items():  # the model's dtypes, fp32 and int64
        expected = value.to(narrower[value.is_floating_point()]).to(value.dtype)
        assert model.state_dict()[key].dtype == value.dtype, key
        torch.testing.assert_close(model.state_dict()[key], expected, rtol=0, atol=0)
    torch.testing.assert_close(model.window, torch.hann_window(8))
    del state["norm.bias"]
    with pytest.raises(CheckpointError, match=r"(?s)w\.safetensors: .*missing keys: norm\.bias"):
        build_loaded(lambda: _Tied(needs_values), state, "w.safetensors")


def test_meta_parameters_touch_only_the_loading_thread() -> None:
    """While one thread builds a model on meta, a model another thread builds is real, and
    nn.Module is restored once every loading thread is done."""
    import threading

    from anytok.checkpoint import _META_PARAMETERS

    original = torch.nn.Module.register_parameter
    inside, release, built = threading.Event(), threading.Event(), {}

    def load_in_thread() -> None:
        with _META_PARAMETERS.active():
            inside.set()
            release.wait(timeout=30)
            built["loading"] = torch.nn.Linear(3, 4)

    thread = threading.Thread(target=load_in_thread)
    thread.start()
    assert inside.wait(timeout=30)
    built["other"] = torch.nn.Linear(3, 4)  # this thread, while the other is inside
    release.set()
    thread.join(timeout=30)
    assert built["loading"].weight.is_meta and not built["other"].weight.is_meta
    assert torch.nn.Module.register_parameter is original


def test_a_loaded_model_saved_over_its_own_checkpoint_still_runs(tmp_path) -> None:
    """Loaded parameters are pages of the memory-mapped file; save_checkpoint replaces the
    file by a rename (never rewriting it in place), so the live model keeps its weights."""
    model = anytok.create_model("seanet_fsq_24khz", tiny=True).eval()
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path).eval()
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)  # copy-on-write: the file keeps the old value
    save_checkpoint(loaded, tmp_path)
    again = load_checkpoint(tmp_path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    audio = torch.randn(1, 1, 2400)
    with torch.inference_mode():
        assert torch.equal(loaded.encode(audio).codes, again.eval().encode(audio).codes)


def test_checkpoint_load_benchmark_smoke(tmp_path) -> None:
    """benchmarks/checkpoint_load.py runs both loading paths and they give the same tokens."""
    from bench_scripts import run_smoke

    (row,) = run_smoke("checkpoint_load", tmp_path, timeout=300)["rows"]
    assert row["same"] and row["assign"]["params"] == row["copy"]["params"] > 0
    assert (tmp_path / "checkpoint_load.md").read_text().count("| dac_44khz |") == 1


def test_checkpoint_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "cnn_fsq_256", "config": {}}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors") as err:
        load_checkpoint(tmp_path)
    assert "pickle" not in str(err.value)
    # torch.save's zip archive, and a raw pickle stream: named as such, never opened
    for head in (b"PK\x03\x04", b"\x80\x02"):
        (tmp_path / "model.safetensors").write_bytes(head + b"\x00" * 64)
        with pytest.raises(CheckpointError, match="looks like a torch.save / pickle file"):
            load_checkpoint(tmp_path)


def test_checkpoint_config_records_architecture(tmp_path) -> None:
    name = anytok.list_models("audio")[0]
    model = anytok.create_model(name, tiny=True)
    save_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == name
    assert config["config"] == get_arch(name).config(tiny=True)
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_no_pickle_in_the_package() -> None:
    """The issue's check: nothing in anytok/ unpickles."""
    result = subprocess.run(
        [
            "grep",
            "-rnE",
            r"torch\.load|allow_pickle=True|import pickle|pickle\.",
            str(REPO / "anytok"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.stdout == "", f"unsafe deserialisation found:\n{result.stdout}"
