"""The recipe of an image: library matching (hash before name), warnings, unsupported fields, and the
`marble info` command line that prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.metadata import interpret_chunks, read_image_metadata
from desktop.engine.recipe import changes, read_recipe, recipe_text
from desktop.engine.request import LoraRef
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
