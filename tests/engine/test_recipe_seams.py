"""Recipes restore the fields added beside the first ones: A1111's SDXL refiner, IP-Adapter units and the
learned preprocessors' modules (as A1111's ControlNet extension writes them), and Marble's few-step kind."""

from __future__ import annotations

from dataclasses import dataclass

from desktop.engine.metadata import interpret_chunks, png_text_chunks
from desktop.engine.recipe import read_recipe
from desktop.engine.request import GenerationRequest


@dataclass(frozen=True)
class Entry:
    name: str
    autov2: str | None = None
    autov3: str | None = None
    sha256: str | None = None


def _unit(index: int, module: str, model: str, extra: str = "") -> str:
    # The extension's own wording and order (sd-webui-controlnet 1.1.4xx), quoted as a whole value.
    return (
        f'ControlNet {index}: "Module: {module}, Model: {model}, Weight: 0.6, Resize Mode: Crop and Resize, '
        f"Low Vram: False, Processor Res: 512, {extra}Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
        'Control Mode: Balanced, Hr Option: Both, Save Detected Map: True"'
    )


# What A1111 1.10 writes for SDXL with the refiner and four ControlNet units.
A1111_SDXL = (
    "a lighthouse at dusk\nNegative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 1024x1024, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, "
    + ", ".join((
        _unit(0, "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-plus_sdxl_vit-h [f1f1f1f1]"),
        _unit(1, "depth_anything", "diffusers_xl_depth_full [2f51180b]"),
        _unit(2, "lineart_realistic", "control_lineart [5c23b17d]", "Threshold A: 0.5, Threshold B: 0.5, "),
        _unit(3, "openpose", "thibaud_xl_openpose [c7b9cadd]"),
    ))
    + ", Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.7, Version: v1.10.1"
)
MODELS = (Entry("sd_xl_base_1.0"), Entry("my-refiner", autov2="7440042bbd"))
CONTROLS = (Entry("ip-adapter-plus_sdxl_vit-h"), Entry("diffusers_xl_depth_full"), Entry("control_lineart"),
            Entry("thibaud_xl_openpose"))  # fmt: skip


def test_a1111_refiner_and_units_with_learned_and_ip_adapter_modules_are_restored():
    recipe = read_recipe(interpret_chunks({"parameters": A1111_SDXL}), MODELS, (), (), CONTROLS)
    # The refiner is matched by its hash (the library's file has another name), as the main model is.
    assert recipe.fields["refiner"] == "my-refiner"
    assert recipe.fields["refiner_switch_at"] == 0.7
    units = recipe.fields["controls"]
    assert [(u.model, u.preprocessor) for u in units] == [
        ("ip-adapter-plus_sdxl_vit-h", "ip-adapter"), ("diffusers_xl_depth_full", "depth"),
        ("control_lineart", "lineart"), ("thibaud_xl_openpose", "openpose"),
    ]  # fmt: skip
    assert all(u.weight == 0.6 for u in units)
    assert recipe.unsupported == ()
    assert "Control unit 0 (ip-adapter-plus_sdxl_vit-h): the PNG does not hold its reference image" in (
        recipe.warnings[0])
    assert "its control image" in recipe.warnings[1]
    # Unsaid means off: A1111 has no few-step kind.
    assert recipe.fields["few_step"] == ""


def test_a_missing_refiner_is_a_warning_and_none_is_used():
    recipe = read_recipe(interpret_chunks({"parameters": A1111_SDXL}), MODELS[:1], (), (), CONTROLS)
    assert recipe.fields["refiner"] == ""
    assert any("The refiner 'sd_xl_refiner_1.0 [7440042bbd]' is not in the library" in w for w in recipe.warnings)
    # Without `Refiner`, an image was made without one: a refiner set in the window is turned off.
    plain = read_recipe(interpret_chunks({"parameters": "x\nSteps: 20, Seed: 1"}), MODELS)
    assert plain.fields["refiner"] == ""


def test_a_refiner_with_the_hires_fix_is_listed_as_not_honoured():
    text = A1111_SDXL.replace("Version:", "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, Version:")
    recipe = read_recipe(interpret_chunks({"parameters": text}), MODELS, (), (), CONTROLS)
    assert recipe.fields["hires_fix"] is True
    assert recipe.fields["refiner"] == ""
    assert any(u.startswith("Refiner: sd_xl_refiner_1.0 [7440042bbd] (Use either the refiner or the hires fix")
               for u in recipe.unsupported)


def test_marble_own_chunk_restores_few_step_and_refiner():
    request = GenerationRequest(prompt="fast", model="sd_xl_base_1.0", steps=4, cfg_scale=1.0, sampler="Euler a",
                                few_step="turbo", refiner="my-refiner", refiner_switch_at=0.6)
    chunks = png_text_chunks(request, 9, None, "0.1.0")
    recipe = read_recipe(interpret_chunks(chunks), MODELS)
    assert recipe.format == "marble"
    assert (recipe.fields["few_step"], recipe.fields["refiner"], recipe.fields["refiner_switch_at"]) == (
        "turbo", "my-refiner", 0.6)
    missing = read_recipe(interpret_chunks(chunks), MODELS[:1])
    assert missing.fields["refiner"] == "" and missing.fields["few_step"] == "turbo"
    assert any("The refiner 'my-refiner' is not in the library" in w for w in missing.warnings)
