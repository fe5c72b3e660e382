"""The recipe of an image: library matching (hash before name), warnings, unsupported fields, and the
`marble info` command line that prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from desktop.engine.backends.base import ModelInfo
from desktop.engine.metadata import interpret_chunks, png_text_chunks, read_image_metadata
from desktop.engine.recipe import RECIPE_FIELDS, changes, read_recipe, recipe_text
from desktop.engine.request import GenerationRequest, LoraRef
from tests.support.recipe_images import BIG_SEED, CASES

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Entry:
    name: str
    autov2: str | None = None
    autov3: str | None = None
    sha256: str | None = None


A1111 = (
    "castle <lora:inkwash:0.7>\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, "
    'Size: 512x512, Model hash: 6ce0161689, Model: dreamy, Lora hashes: "inkwash: 0123456789ab", '
    "Hires upscale: 2, ADetailer model: face_yolov8n.pt, Version: v1.10.1"
)


def recipe_of(text: str, models=(), loras=()):
    return read_recipe(interpret_chunks({"parameters": text}), models, loras)


def test_hash_match_beats_name_match():
    by_name, by_hash = Entry("dreamy", autov2="ffffffffff"), Entry("renamed-file", autov2="6ce0161689")
    lora_by_name, lora_by_hash = Entry("inkwash", autov3="aaaaaaaaaaaa"), Entry("ink v2", autov3="0123456789ab")
    recipe = recipe_of(A1111, [by_name, by_hash], [lora_by_name, lora_by_hash])
    assert recipe.fields["model"] == "renamed-file"
    assert recipe.fields["loras"] == (LoraRef("ink v2", 0.7),)
    assert recipe.fields["prompt"] == "castle"  # the tag moved into the LoRA list
    assert recipe.warnings == ()


def test_name_match_when_no_hash_matches_says_the_hash_differs():
    recipe = recipe_of(A1111, [Entry("dreamy", autov2="ffffffffff")], [Entry("inkwash")])
    assert recipe.fields["model"] == "dreamy"
    assert recipe.fields["loras"] == (LoraRef("inkwash", 0.7),)
    assert any("matched by name" in text and "ffffffffff" in text for text in recipe.warnings)


def test_a_missing_model_and_lora_are_warned_about_and_left_out():
    recipe = recipe_of(A1111)
    assert "model" not in recipe.fields and recipe.fields["loras"] == ()
    assert recipe.warnings[0].startswith("The model 'dreamy' (hash 6ce0161689) is not in the library")
    assert recipe.warnings[1].startswith("The LoRA 'inkwash' (hash 0123456789ab) is not in the library")


def test_every_setting_marble_cannot_honour_is_listed():
    text = A1111.replace("Sampler: DPM++ 2M, Schedule type: Karras", "Sampler: Restart, Schedule type: Exponential")
    recipe = recipe_of(text.replace("Steps: 20", "Steps: 900"))
    assert "sampler" not in recipe.fields and "steps" not in recipe.fields
    listed = "\n".join(recipe.unsupported)
    for expected in ("ADetailer model: face_yolov8n.pt", "Sampler: Restart", "Steps: 900"):
        assert expected in listed
    assert "Hires upscale" not in listed and recipe.fields["hires_fix"] is True  # the hires fix is honoured
    assert "Version" not in listed and "Model hash" not in listed
    assert "Not used by Marble:\n- " in recipe_text(recipe)


def test_seed_of_2_64_minus_1_is_kept_exactly():
    recipe = recipe_of("p\nSteps: 5, Seed: 18446744073709551615")
    assert recipe.fields["seed"] == BIG_SEED
    too_big = recipe_of("p\nSteps: 5, Seed: 18446744073709551616")
    assert "seed" not in too_big.fields and any(text.startswith("Seed:") for text in too_big.unsupported)


def test_changes_list_old_and_new():
    listed = [str(c) for c in changes({"steps": 20, "seed": 5, "cfg_scale": 7.0}, {"steps": 30, "seed": -1,
                                                                                  "cfg_scale": 7.0})]
    assert listed == ["Steps: 30 -> 20", "Seed: random -> 5"]


def _marble_info(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "desktop.cli", "info", *args, "--home", str(home)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_marble_info_prints_the_recipe_as_text_and_json(tmp_path):
    comfy = next(case for case in CASES if case.name == "comfyui").write(tmp_path)
    text = _marble_info(str(comfy), home=tmp_path / "home")
    assert text.returncode == 0, text.stderr
    expected = recipe_text(read_recipe(read_image_metadata(comfy)))
    assert text.stdout.rstrip("\n") == expected
    assert f"Seed: {BIG_SEED}" in text.stdout and "The model 'comfy-model' is not in the library" in text.stdout

    as_json = _marble_info(str(comfy), "--json", home=tmp_path / "home")
    document = json.loads(as_json.stdout)
    assert document["format"] == "comfyui"
    assert document["fields"]["seed"] == BIG_SEED and document["fields"]["steps"] == 22
    assert document["warnings"][0].startswith("The model 'comfy-model'")

    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    refused = _marble_info(str(bad), home=tmp_path / "home")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr


VARIED = (
    "castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model: dreamy, "
    "VAE hash: 735e4c3a44, VAE: crisp-vae.safetensors, Variation seed: 77, Variation seed strength: 0.35, "
    "Seed resize from: 768x640, Tiling: True"
)


def test_vae_is_matched_by_hash_then_name_and_a_missing_one_is_warned_about():
    by_name, by_hash = Entry("crisp-vae", autov2="ffffffffff"), Entry("renamed-vae", autov2="735e4c3a44")
    recipe = read_recipe(interpret_chunks({"parameters": VARIED}), [Entry("dreamy")], (), [by_name, by_hash])
    assert recipe.fields["vae"] == "renamed-vae" and recipe.warnings == ()
    assert read_recipe(interpret_chunks({"parameters": VARIED}), [Entry("dreamy")], (), [by_name]).fields["vae"] == (
        "crisp-vae"
    )
    missing = read_recipe(interpret_chunks({"parameters": VARIED}), [Entry("dreamy")])
    assert missing.fields["vae"] == ""
    assert any("VAE 'crisp-vae' (hash 735e4c3a44) is not in the library" in text for text in missing.warnings)
    assert not any(text.startswith(("VAE", "Variation", "Seed resize", "Tiling")) for text in missing.unsupported)


def test_variation_seed_resize_and_tiling_are_honoured_and_unsaid_means_off():
    fields = recipe_of(VARIED, [Entry("dreamy")]).fields
    assert (fields["subseed"], fields["subseed_strength"]) == (77, 0.35)
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"], fields["tiling"]) == (768, 640, True)
    plain = recipe_of("castle\nSteps: 20, Seed: 5, Size: 512x512", [Entry("dreamy")]).fields
    off = (plain["subseed_strength"], plain["seed_resize_from_w"], plain["tiling"], plain["vae"])
    assert off == (0.0, 0, False, "")
    assert [str(change) for change in changes({"tiling": True, "vae": ""}, {"tiling": False, "vae": "crisp"})] == [
        "Tiling: False -> True", "VAE: crisp -> the model's own",
    ]


# Edges a mutation sweep of recipe.py found untested (2026-12-07): each test below failed with one of its mutants.


def _marble_chunk(request: GenerationRequest, model: ModelInfo | None = None):
    return interpret_chunks(png_text_chunks(request, 9, model, "0.1.0"))


def test_an_image_without_a_recipe_sets_nothing():
    recipe = read_recipe(interpret_chunks({"Description": "a holiday photo"}), [Entry("dreamy")])
    assert recipe.format == "unknown" and not recipe.has_recipe
    assert dict(recipe.fields) == {} and recipe.warnings == () and recipe.unsupported == ()
    assert recipe_text(recipe) == "This image carries no recipe (no generation settings in its metadata)."


def test_a_lora_tag_marble_cannot_read_stays_in_the_prompt_with_a_warning():
    recipe = recipe_of("castle <lora:inkwash:heavy>\nSteps: 20, Seed: 5", [Entry("dreamy")], [Entry("inkwash")])
    assert recipe.fields["prompt"] == "castle <lora:inkwash:heavy>" and "loras" not in recipe.fields
    assert any(text.endswith("The tag stays in the prompt.") for text in recipe.warnings)


def test_a_lora_named_twice_is_used_once_at_its_first_weight():
    recipe = recipe_of("castle <lora:inkwash:0.5> <lora:INKWASH:0.9>\nSteps: 20", (), [Entry("inkwash")])
    assert recipe.fields["loras"] == (LoraRef("inkwash", 0.5),)


def test_names_match_in_any_case_an_exact_one_first():
    entries = [Entry("DREAMY"), Entry("Dreamy")]
    assert recipe_of("castle\nSteps: 20, Model: Dreamy", entries).fields["model"] == "Dreamy"
    assert recipe_of("castle\nSteps: 20, Model: dreamy", entries).fields["model"] == "DREAMY"


def test_hashes_a1111_writes_and_what_they_may_match():
    full = "6ce0161689" + "0" * 54
    # A model hash is the file's sha256 cut short (AutoV2): a record with the full hash alone matches it.
    assert recipe_of("castle\nSteps: 20, Model hash: 6ce0161689", [Entry("renamed", sha256=full)]).fields["model"] == (
        "renamed")
    # Too short to be a hash: the name decides.
    short = recipe_of("castle\nSteps: 20, Model hash: 6ce0, Model: dreamy", [Entry("other", sha256=full),
                                                                               Entry("dreamy")])  # fmt: skip
    assert short.fields["model"] == "dreamy"
    # A LoRA hash is the tensors' (AutoV3), never a prefix of the file's sha256.
    lora = recipe_of('castle <lora:inkwash:0.7>\nSteps: 20, Lora hashes: "inkwash: 6ce0161689ab"', (),
                     [Entry("other", sha256="6ce0161689ab" + "0" * 52)])  # fmt: skip
    assert lora.fields["loras"] == () and lora.warnings[0].startswith("The LoRA 'inkwash' (hash 6ce0161689ab)")
    # `Lora hashes` names are matched in any case.
    named = recipe_of('castle <lora:inkwash:0.7>\nSteps: 20, Lora hashes: "InkWash: 0123456789ab"', (),
                      [Entry("ink v2", autov3="0123456789ab")])  # fmt: skip
    assert named.fields["loras"] == (LoraRef("ink v2", 0.7),)


def test_a_model_hash_alone_finds_the_model_or_says_it_is_missing():
    recipe = recipe_of("castle\nSteps: 20, Model hash: 6ce0161689", [Entry("renamed", autov2="6ce0161689")])
    assert recipe.fields["model"] == "renamed" and recipe.warnings == ()
    unknown = recipe_of("castle\nSteps: 20, Model hash: 6ce0161689")
    assert "model" not in unknown.fields
    assert unknown.warnings == ("The model (hash 6ce0161689) is not in the library: the current model is kept. Import "
                                "it (drop the file on the window) to reproduce this image.",)  # fmt: skip


def test_settings_read_in_the_forms_a1111_writes():
    fields = recipe_of("castle\nSteps: 20.0, CFG scale: 1, Distilled CFG Scale: 3.5, Size: 512×768, Emphasis: no norm, "
                       "Variation seed: 77, Tiling: False").fields  # fmt: skip
    assert (fields["steps"], fields["cfg_scale"], fields["distilled_cfg_scale"]) == (20, 1.0, 3.5)
    assert (fields["width"], fields["height"], fields["emphasis"]) == (512, 768, "No norm")
    assert (fields["subseed"], fields["subseed_strength"], fields["tiling"]) == (77, 0.0, False)
    odd = recipe_of("castle\nSteps: 20.5, CFG scale: nan")
    assert "steps" not in odd.fields and "cfg_scale" not in odd.fields
    assert odd.unsupported == ("Steps: 20.5 (not a valid value)", "CFG scale: nan (not a valid value)")


def test_schedules_marble_lacks_are_listed():
    exponential = recipe_of("castle\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Exponential")
    assert exponential.fields["sampler"] == "DPM++ 2M"
    assert exponential.unsupported == ("Schedule type: Exponential (Marble has no such schedule)",)
    karras = recipe_of("castle\nSteps: 20, Sampler: Euler a Karras")
    assert karras.fields["sampler"] == "Euler a"
    assert karras.unsupported == ("Schedule type: Karras (Marble has no Karras Euler a)",)


def test_denoising_strength_is_the_hires_fixs_only_with_the_hires_fix():
    plain = recipe_of("castle\nSteps: 20, Denoising strength: 0.4")
    assert plain.unsupported == ("Denoising strength: 0.4 (Marble has no such setting)",)
    hires = recipe_of("castle\nSteps: 20, Denoising strength: 0.4, Hires upscale: 2, Hires steps: 10")
    assert hires.fields["hires_fix"] is True and hires.fields["hires_denoise"] == 0.4 and hires.unsupported == ()


def test_hires_upscalers_from_the_library_and_a_hires_fix_marble_cannot_run():
    text = "castle\nSteps: 20, Hires upscale: 2, Hires upscaler: 4x-UltraSharp"
    found = read_recipe(interpret_chunks({"parameters": text}), upscalers=[Entry("4x-UltraSharp")])
    assert found.fields["hires_upscaler"] == "4x-UltraSharp" and found.unsupported == ()
    missing = recipe_of(text)
    assert missing.fields["hires_fix"] is True and "hires_upscaler" not in missing.fields
    assert missing.unsupported == ("Hires upscaler: 4x-UltraSharp (not in the upscaler library; Latent is used)",)
    too_many = recipe_of("castle\nSteps: 20, Hires upscale: 2, Hires steps: 5000")
    assert too_many.fields["hires_fix"] is False and "hires_steps" not in too_many.fields
    assert len(too_many.unsupported) == 1 and too_many.unsupported[0].startswith("Hires fix: ")


def test_a1111_control_units_with_a_preprocessor_marble_lacks_or_the_built_in_model():
    unit = ('ControlNet 0: "Module: my_own_edges, Model: control_canny [aaaaaaaa], Weight: 0.6, Guidance Start: 0.0, '
            'Guidance End: 1.0, Control Mode: Balanced"')  # fmt: skip
    recipe = read_recipe(interpret_chunks({"parameters": f"castle\nSteps: 20, {unit}"}), (), (), (),
                         [Entry("control_canny")])  # fmt: skip
    (restored,) = recipe.fields["controls"]
    assert (restored.model, restored.preprocessor, restored.weight) == ("control_canny", "none", 0.6)
    assert recipe.unsupported == ("ControlNet 0: preprocessor my_own_edges (not built in; the image is used as is)",)
    built_in = unit.replace("control_canny [aaaaaaaa]", "Built-In")
    recipe = read_recipe(interpret_chunks({"parameters": f"castle\nSteps: 20, {built_in}"}))
    assert [unit.model for unit in recipe.fields["controls"]] == ["built-in"]
    assert not any("not in the library" in text for text in recipe.warnings)


def test_marbles_own_chunk_restores_its_loras_and_tiling_and_says_what_it_cannot():
    request = GenerationRequest(prompt="castle", model="dreamy", loras=(LoraRef("inkwash", 0.6),), seed=9, tiling=True,
                                init_image="/pictures/source.png", strength=0.5)  # fmt: skip
    recipe = read_recipe(_marble_chunk(request), [Entry("dreamy")], [Entry("inkwash")])
    assert recipe.format == "marble" and recipe.fields["loras"] == (LoraRef("inkwash", 0.6),)
    assert recipe.fields["tiling"] is True
    assert "distilled_cfg_scale" not in recipe.fields  # written for Flux dev only; the current value stays
    assert recipe.unsupported == ("Source image: the image was made from a source image, which the file does not "
                                  "hold",)  # fmt: skip
    flux = _marble_chunk(replace(request, init_image=None, distilled_cfg_scale=2.5),
                         ModelInfo("dreamy", "/m", "flux-dev", None))  # fmt: skip
    assert read_recipe(flux, [Entry("dreamy")]).fields["distilled_cfg_scale"] == 2.5


def test_the_recipe_as_fields_json_and_text():
    text = ("castle <lora:inkwash:0.7>\nNegative prompt: blurry\nSteps: 20, Seed: 5, "
            'ControlNet 0: "Module: none, Model: control_canny, Weight: 0.6"')  # fmt: skip
    recipe = read_recipe(interpret_chunks({"parameters": text}), (), [Entry("inkwash")], (), [Entry("control_canny")])
    assert list(recipe.fields) == [name for name in RECIPE_FIELDS if name in recipe.fields]
    assert recipe.prompt_fields() == {"prompt": "castle", "negative_prompt": "blurry",
                                      "loras": (LoraRef("inkwash", 0.7),)}  # fmt: skip
    document = recipe.to_json()
    assert document["fields"]["loras"] == [{"name": "inkwash", "weight": 0.7}]
    assert [(unit["model"], unit["weight"]) for unit in document["fields"]["controls"]] == [("control_canny", 0.6)]
    assert json.loads(json.dumps(document))["fields"]["controls"][0]["model"] == "control_canny"
    assert "\n\nNegative prompt:\nblurry\n" in recipe_text(recipe)


def test_changes_shorten_long_values_and_say_none():
    long = "a castle on a hill at dusk, oil painting, highly detailed"
    listed = [str(c) for c in changes({"prompt": long, "refiner": "", "few_step": ""},
                                      {"prompt": "x", "refiner": "my-refiner", "few_step": "turbo"})]  # fmt: skip
    assert listed == ["Prompt: x -> a castle on a hill at dusk, oil paintin…", "Refiner: my-refiner -> none",
                      "Few-step: turbo -> none"]  # fmt: skip


def test_the_prompt_as_typed_is_shown_beside_the_prompt_the_image_was_made_from():
    """Wildcards chosen (or FLUX.3's rewriter's caption): Marble's chunk keeps the prompt as typed; the recipe shows it
    after the prompt and in its JSON, and reuses the prompt the image was made from."""
    typed = GenerationRequest(prompt="a __animal__ at dusk", model="m", steps=3)
    made = replace(typed, prompt="a fox at dusk")
    model = ModelInfo("m", "/m", "sd1", None)
    recipe = read_recipe(interpret_chunks(png_text_chunks(made, 7, model, "1.0", template=typed)))
    assert (recipe.prompt, recipe.typed_prompt, recipe.fields["prompt"]) == ("a fox at dusk", typed.prompt,
                                                                            "a fox at dusk")  # fmt: skip
    assert "Prompt:\na fox at dusk\n\nPrompt as typed:\na __animal__ at dusk\n" in recipe_text(recipe)
    assert recipe.to_json()["typed_prompt"] == typed.prompt
    # Made from the prompt as typed, or the chunk's template malformed: nothing more is said.
    plain = read_recipe(interpret_chunks(png_text_chunks(made, 7, model, "1.0", template=made)))
    assert plain.typed_prompt == "" and "as typed" not in recipe_text(plain) and "typed_prompt" not in plain.to_json()
    chunks = png_text_chunks(made, 7, model, "1.0", template=typed)
    document = json.loads(chunks["marble"]) | {"prompt_template": ["a __animal__"]}
    assert read_recipe(interpret_chunks(chunks | {"marble": json.dumps(document)})).typed_prompt == ""
    # Another tool's parameters text has no template.
    assert read_recipe(interpret_chunks({"parameters": chunks["parameters"]})).typed_prompt == ""
