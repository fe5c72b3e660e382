"""Few-step models and LoRAs (library/few_step.py): told from their headers, given their published
settings by the command line, and their timestep spacing honoured by the backend."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, LCMScheduler, StableDiffusionPipeline

from desktop.engine.library.few_step import PRESETS, few_step_from_metadata
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from tests.e2e.test_cli import in_process
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support import tiny_loras, tiny_models


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        ({"ss_output_name": "sdxl_lightning_4step_lora", "ss_network_module": "networks.lora"}, "lightning"),
        ({"modelspec.title": "SDXL-Turbo"}, "turbo"),
        ({"ss_output_name": "lcm-lora-sdv1-5"}, "lcm"),
        ({"modelspec.title": "Hyper-SD 8-step LoRA"}, "hyper"),
        ({"modelspec.name": "dmd2_sdxl_4step"}, "dmd2"),
        ({"modelspec.title": "Hyperrealism v3"}, None),  # "hyper" alone is an ordinary word
        ({"ss_output_name": "turbocharged_cars"}, None),  # a whole word only
        ({"format": "pt"}, None),
    ],
)
def test_the_kind_is_read_from_the_header_metadata(metadata, kind):
    assert few_step_from_metadata(metadata) == kind


def test_a_few_step_single_file_is_a_family_of_its_own_with_its_defaults(tmp_path):
    pipe = tiny_models.build_tiny_sd15()
    plain = tiny_models.save_single_file(pipe, tmp_path / "plain.safetensors")
    fast = tiny_models.save_single_file(pipe, tmp_path / "fast.safetensors", metadata={"modelspec.title": "Lightning"})
    assert model_family(plain) == "sd1" and family_defaults("sd1") == {}
    assert model_family(fast) == "sd1-lightning"
    lightning = {"steps": 4, "cfg_scale": 1.0, "sampler": "Euler", "few_step": "lightning"}
    assert family_defaults("sd1-lightning") == lightning
    assert family_defaults("flux-schnell") == {"steps": 4, "cfg_scale": 1.0}  # the existing table still works


def _cli(model, home, out, *extra):
    return in_process(
        ["generate", "--model", str(model), "--prompt", "a fox", "--seed", "3", "--width", "64", "--height", "64",
         "--device", "cpu", "--out", str(out), "--no-preview", "--home", str(home), *extra]
    )  # fmt: skip


def test_cli_takes_the_preset_from_a_lora_header_or_the_option(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    loras = AppPaths.for_root(home).ensure().loras
    pipe = tiny_models.build_tiny_sd15()
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(pipe), loras / "speedy.safetensors",
                         {"ss_output_name": "lcm-lora-sdv1-5", "ss_network_module": "networks.lora"})  # fmt: skip
    code, _, err = _cli(tiny_sd15_dir, home, tmp_path / "a.png", "--lora", "speedy")
    assert code == 0, err
    request = read_image_metadata(tmp_path / "a.png").request
    assert (request.steps, request.cfg_scale, request.sampler, request.few_step) == (4, 1.0, "LCM", "lcm")

    # Chosen by hand; what the user gives wins over the preset.
    code, _, err = _cli(tiny_sd15_dir, home, tmp_path / "b.png", "--few-step", "turbo", "--steps", "2")
    assert code == 0, err
    request = read_image_metadata(tmp_path / "b.png").request
    assert (request.steps, request.cfg_scale, request.sampler, request.few_step) == (2, 1.0, "Euler a", "turbo")

    code, _, err = _cli(tiny_sd15_dir, home, tmp_path / "c.png", "--steps", "2")  # no kind: the usual defaults
    request = read_image_metadata(tmp_path / "c.png").request
    assert code == 0 and (request.cfg_scale, request.sampler, request.few_step) == (7.5, "default", "")


def test_a_lora_marked_in_the_library_brings_its_preset_to_the_command_line(tmp_path, tiny_sd15_dir):
    """latent-consistency's LCM-LoRA files name nothing in their headers: `marble loras few-step` says what they are."""
    home = tmp_path / "home"
    loras = AppPaths.for_root(home).ensure().loras
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15()), loras / "lcm.safetensors")
    at_home = ("--home", str(home))
    code, _, err = _cli(tiny_sd15_dir, home, tmp_path / "before.png", "--lora", "lcm", "--steps", "2")
    assert code == 0 and read_image_metadata(tmp_path / "before.png").request.few_step == "", err

    code, _, err = in_process(["loras", "few-step", "lcm", "lcm", *at_home])
    assert code == 0 and "lcm is now a few-step LoRA (lcm)." in err, err
    code, out, _ = in_process(["loras", "few-step", "lcm", *at_home])
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("*")] == [["*", "lcm"]]
    assert "header     as its header says (no kind)" in out
    code, out, _ = in_process(["loras", "info", "lcm", *at_home])
    assert "few-step: LCM (chosen)" in out, out
    code, out, _ = in_process(["loras", "list", "--json", *at_home])
    assert json.loads(out)["few_step_kind"] == "lcm"
    code, out, _ = in_process(["loras", "list", *at_home])
    assert out.split("\t")[1].endswith(", LCM few-step"), out

    code, _, err = _cli(tiny_sd15_dir, home, tmp_path / "a.png", "--lora", "lcm")
    assert code == 0, err
    request = read_image_metadata(tmp_path / "a.png").request
    assert (request.steps, request.cfg_scale, request.sampler, request.few_step) == (4, 1.0, "LCM", "lcm")

    code, _, err = in_process(["loras", "few-step", "lcm", "warp", *at_home])
    assert code != 0 and "invalid choice: 'warp'" in err, err


def test_backend_runs_the_kinds_sampler_with_trailing_timesteps(paths, tiny_sd15_dir):
    request = request_for(tiny_sd15_dir, steps=2, cfg_scale=1.0, sampler="Euler a", few_step="turbo")
    batch, steps = run(make_backend(paths), request)
    assert len(steps) == 2

    bare = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True)
    bare.set_progress_bar_config(disable=True)
    config = bare.scheduler.config

    def bare_image(**scheduler_changes):
        bare.scheduler = EulerAncestralDiscreteScheduler.from_config(config, **scheduler_changes)
        return pixels(bare(
            prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=2,
            guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(request.seed), height=64, width=64,
        ).images[0])  # fmt: skip

    assert PRESETS["turbo"].timestep_spacing == "trailing"
    assert np.array_equal(pixels(batch.images[0]), bare_image(timestep_spacing="trailing"))
    assert not np.array_equal(pixels(batch.images[0]), bare_image())


def test_dmd2_runs_lcm_at_the_timesteps_its_card_passes(paths, tiny_sd15_dir):
    # DMD2's card: LCMScheduler, guidance 0, timesteps=[999, 749, 499, 249]; LCM's own 4 steps are 999, 759, 499, 259.
    request = request_for(tiny_sd15_dir, steps=4, cfg_scale=1.0, sampler="LCM", few_step="dmd2")
    batch, steps = run(make_backend(paths), request)
    assert len(steps) == 4 and batch.sampler_used == "LCM"

    bare = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True)
    bare.set_progress_bar_config(disable=True)
    bare.scheduler = LCMScheduler.from_config(bare.scheduler.config)

    def bare_image(**schedule):
        return pixels(bare(
            prompt=request.prompt, negative_prompt=request.negative_prompt, guidance_scale=1.0, height=64, width=64,
            generator=torch.Generator("cpu").manual_seed(request.seed), **schedule,
        ).images[0])  # fmt: skip

    assert np.array_equal(pixels(batch.images[0]), bare_image(timesteps=[999, 749, 499, 249]))
    assert not np.array_equal(pixels(batch.images[0]), bare_image(num_inference_steps=4))
    # Plain LCM keeps its own schedule.
    lcm, _ = run(make_backend(paths), request_for(tiny_sd15_dir, steps=4, cfg_scale=1.0, sampler="LCM", few_step="lcm"))
    assert np.array_equal(pixels(lcm.images[0]), bare_image(num_inference_steps=4))


def test_dmd2_spaces_a_models_own_lcm_scheduler_too(paths, tiny_sd15_dir, tmp_path):
    # A checkpoint merged with DMD2 or LCM can ship LCM as its scheduler: "default" runs it, spaced as DMD2's card.
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "lcm-merged")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"_class_name": "LCMScheduler"}))
    index = folder / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"scheduler": ["diffusers", "LCMScheduler"]}))
    request = request_for(folder, steps=4, cfg_scale=1.0, few_step="dmd2")
    dmd2, _ = run(make_backend(paths), request)
    explicit, _ = run(make_backend(paths), replace(request, sampler="LCM"))
    plain, _ = run(make_backend(paths), replace(request, few_step=""))
    assert np.array_equal(pixels(dmd2.images[0]), pixels(explicit.images[0]))
    assert not np.array_equal(pixels(dmd2.images[0]), pixels(plain.images[0]))


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def test_a_model_file_marked_as_a_few_step_kind_takes_its_preset(tmp_path, tiny_sd15_single):
    """A Lightning or Turbo merge shared without metadata has a plain model's tensors and header: the user marks it
    (`marble models variant NAME lightning`, the Library's Variant…) and it is then a family of its own, with its
    preset, on the command line and in the window (model_family with the chosen variant)."""
    from desktop.engine.library.index import Library, record_variant_choices
    from desktop.engine.library.native_size import model_family

    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    library = Library(paths)
    record = library.import_path(str(tiny_sd15_single[0]), "model", "merge")
    assert record_variant_choices(record) == {
        "": "SD 1.x (as the file says)", "lcm": "SD 1.x LCM", "turbo": "SD 1.x Turbo",
        "lightning": "SD 1.x Lightning", "hyper": "SD 1.x Hyper-SD", "dmd2": "SD 1.x DMD2",
    }  # fmt: skip
    # A refiner only finishes another model's steps: no few-step kind of its own.
    assert record_variant_choices(replace(record, family="sdxl", architecture="SDXL refiner")) == {}
    at_home = ("--home", str(home))
    code, _, err = in_process(["models", "variant", "merge", "lightning", *at_home])
    assert code == 0 and "merge is now run as SD 1.x Lightning." in err, err
    assert library.chosen_variants() == {"merge": "lightning"}
    assert model_family(library.path_of(library.get("model", "merge")), "lightning") == "sd1-lightning"

    config = ("--config", str(tiny_sd15_single[1]))  # the tiny file's dimensions
    code, _, err = _cli("merge", home, tmp_path / "a.png", *config)
    assert code == 0, err
    request = read_image_metadata(tmp_path / "a.png").request
    assert (request.steps, request.cfg_scale, request.sampler, request.few_step) == (4, 1.0, "Euler", "lightning")

    code, _, err = in_process(["models", "variant", "merge", "base", *at_home])  # as the file says: no kind
    assert code == 0 and library.get("model", "merge").architecture == "SD 1.x", err
    code, _, err = _cli("merge", home, tmp_path / "b.png", "--steps", "2", *config)
    request = read_image_metadata(tmp_path / "b.png").request
    assert code == 0 and (request.cfg_scale, request.sampler, request.few_step) == (7.5, "default", ""), err
