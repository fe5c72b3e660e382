"""Qwen-Image-Edit and Edit Plus: a tiny random Edit model (Qwen2.5-VL with a tiny vision tower, a Qwen2VL
processor) saved as a diffusers folder and run offline through Marble: pixel-identical to bare diffusers,
the source image matters, and a text encoder without its vision tower or a folder without a processor is
refused by name.

The Edit pipelines resize every source to about 1 megapixel before encoding it (diffusers'
`calculate_dimensions(1024 * 1024, ...)`), which alone takes a tiny VAE ~20 s on a busy CPU. The tests
shrink that area 256-fold (64x64) in diffusers' own modules, for Marble and bare diffusers alike, as the
tiny model shrinks every other dimension."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditInpaintPipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import (
    pipeline_qwenimage_edit,
    pipeline_qwenimage_edit_inpaint,
    pipeline_qwenimage_edit_plus,
)
from PIL import Image
from safetensors.torch import load_file, save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_extras import close
from tests.support.tiny_qwen_edit import build_tiny_qwen_edit, save_edit_folder, tiny_processor
from tests.support.tiny_qwen_zimage import save_transformer_file

_SHRINK = 256  # 1024 * 1024 / 256 = 64 * 64


@pytest.fixture(autouse=True)
def small_conditioning(monkeypatch):
    for module in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_inpaint, pipeline_qwenimage_edit_plus):
        original = module.calculate_dimensions
        monkeypatch.setattr(
            module, "calculate_dimensions", lambda area, ratio, original=original: original(area / _SHRINK, ratio)
        )


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen-edit")
    pipe = build_tiny_qwen_edit()
    folder = save_edit_folder(pipe, tmp / "qwen-edit")
    plus = save_edit_folder(build_tiny_qwen_edit(plus=True), tmp / "qwen-edit-plus")
    return {"pipe": pipe, "folder": folder, "plus": plus, "tmp": tmp}


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def _image(tmp_path, name, flip=False):
    gradient = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    if flip:
        gradient = gradient[:, ::-1]
    image = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1))
    path = tmp_path / name
    image.save(path)
    return image, path


def bare(cls, folder, request, **inputs):
    pipe = cls.from_pretrained(str(folder), local_files_only=True, processor=tiny_processor())
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt or " ", true_cfg_scale=request.cfg_scale,
        num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **inputs,
    ).images[0]  # fmt: skip
    return pixels(image)


def test_edit_folder_is_detected_and_an_instruction_edit_matches_bare_diffusers(paths, edit, tmp_path):
    arch = detect_model(edit["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.label, arch.config_name) == (
        "qwen-image", "edit", "Qwen-Image Edit", "qwen-image"
    )  # fmt: skip
    source, path = _image(tmp_path, "source.png")
    request = request_for(edit["folder"], steps=2, cfg_scale=4.0, init_image=str(path))
    assert request.mode == "img2img"
    batch, steps = run(make_backend(paths), request)
    expected = bare(QwenImageEditPipeline, edit["folder"], request, image=source)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 2  # no strength: the edit runs every step
    # The source conditions the edit: another source, another picture.
    _, other_path = _image(tmp_path, "other.png", flip=True)
    other, _ = run(make_backend(paths), request_for(edit["folder"], steps=2, cfg_scale=4.0, init_image=str(other_path)))
    assert not np.array_equal(pixels(other.images[0]), expected)


def test_an_edit_model_without_a_source_image_is_refused(paths, edit):
    with pytest.raises(ModelError, match=r"Qwen-Image Edit model: it edits a source image by instruction"):
        run(make_backend(paths), request_for(edit["folder"], steps=2))


def test_a_text_encoder_without_its_vision_tower_or_a_folder_without_processor_is_refused(paths, edit, tmp_path):
    _, path = _image(tmp_path, "source.png")
    blind = tmp_path / "blind"
    shutil.copytree(edit["folder"], blind)
    weights = blind / "text_encoder" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("visual.")}, str(weights))
    with pytest.raises(ModelError, match=r"text_encoder has no vision tower \(no visual\.\* weights\)"):
        run(make_backend(paths), request_for(blind, steps=2, init_image=str(path)))
    bare_folder = tmp_path / "no-processor"
    shutil.copytree(edit["folder"], bare_folder)
    shutil.rmtree(bare_folder / "processor")
    with pytest.raises(ModelError, match=r"no-processor cannot serve .*it has no processor/preprocessor_config\.json"):
        run(make_backend(paths), request_for(bare_folder, steps=2, init_image=str(path)))


def test_a_transformer_file_is_an_edit_model_by_its_text_encoder_folder_or_metadata(paths, edit, tmp_path):
    state = dict(edit["pipe"].transformer.state_dict())
    file = save_transformer_file(state, tmp_path / "qwen-image.safetensors", prefix="model.diffusion_model.")
    assert detect_model(file).dit.variant == ""  # the tensors are the base model's
    source, path = _image(tmp_path, "source.png")
    # No --config: the Edit folder's own transformer config serves (not the shipped 60-block one).
    request = request_for(file, steps=2, cfg_scale=4.0, init_image=str(path), text_encoders=str(edit["folder"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(QwenImageEditPipeline, edit["folder"], request, image=source))
    tagged = tmp_path / "tagged.safetensors"
    save_file(state, str(tagged), metadata={"modelspec.architecture": "qwen-image-edit-2509"})
    assert (detect_model(tagged).dit.variant, detect_model(tagged).label) == ("edit-plus", "Qwen-Image Edit Plus")


def test_edit_models_get_their_model_cards_defaults(edit, tmp_path):
    from desktop.engine.library.native_size import family_defaults, model_family

    families = (model_family(edit["folder"]), model_family(edit["plus"]))
    assert families == ("qwen-image-edit", "qwen-image-edit-plus")
    assert [family_defaults(f) for f in families] == [{"steps": 50, "cfg_scale": 4.0}, {"steps": 40, "cfg_scale": 4.0}]


def test_the_command_line_takes_reference_images_and_records_them(edit, tmp_path):
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    _, source = _image(tmp_path, "source.png")
    _, reference = _image(tmp_path, "reference.png", flip=True)
    code, out, err = in_process([
        "--home", str(tmp_path / "home"), "generate", "--model", str(edit["plus"]), "--prompt", "put the cat in it",
        "--steps", "2", "--seed", "3", "--device", "cpu", "--init-image", str(source), "--reference-image",
        str(reference), "--out", str(tmp_path / "out.png"),
    ])  # fmt: skip
    assert code == 0, err
    metadata = read_image_metadata(tmp_path / "out.png")
    assert metadata.request.reference_images == (str(reference),)
    assert (metadata.request.steps, metadata.request.cfg_scale) == (2, 4.0)  # the card's CFG, the user's steps
    assert metadata.settings["Reference image hashes"] == hashlib.sha256(reference.read_bytes()).hexdigest()[:10]


def test_edit_plus_reads_the_reference_images_too(paths, edit, tmp_path):
    assert detect_model(edit["plus"]).dit.variant == "edit-plus"
    source, path = _image(tmp_path, "source.png")
    reference, reference_path = _image(tmp_path, "reference.png", flip=True)
    request = request_for(
        edit["plus"], steps=2, cfg_scale=4.0, init_image=str(path), reference_images=(str(reference_path),)
    )
    batch, _ = run(make_backend(paths), request)
    expected = bare(QwenImageEditPlusPipeline, edit["plus"], request, image=[source, reference])
    assert np.array_equal(pixels(batch.images[0]), expected)
    alone, _ = run(make_backend(paths), request_for(edit["plus"], steps=2, cfg_scale=4.0, init_image=str(path)))
    assert not np.array_equal(pixels(alone.images[0]), expected)
    # The recipe keeps them.
    saved = json.loads(json.dumps(request.to_dict()))
    assert GenerationRequest.from_dict(saved).reference_images == (str(reference_path),)


def test_edit_inpainting_matches_diffusers_inside_the_mask_and_keeps_the_rest(paths, edit, tmp_path):
    source, path = _image(tmp_path, "source.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    request = request_for(
        edit["folder"], steps=2, cfg_scale=4.0, init_image=str(path), mask=str(tmp_path / "mask.png"), strength=1.0,
        mask_blur=0,
    )  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    result, inside = pixels(batch.images[0]), mask > 0
    assert np.array_equal(result[~inside], pixels(source)[~inside])
    expected = bare(
        QwenImageEditInpaintPipeline, edit["folder"], request, image=source, mask_image=Image.fromarray(mask),
        strength=1.0,
    )  # fmt: skip
    assert np.array_equal(result[inside], expected[inside])


def test_reference_images_need_a_source_and_an_edit_plus_model(paths, edit, tmp_path):
    _, path = _image(tmp_path, "source.png")
    with pytest.raises(ModelError, match="cannot draw from text alone"):
        run(make_backend(paths), request_for(edit["plus"], steps=2, reference_images=(str(path),)))
    with pytest.raises(ModelError, match=r"^3 reference images: Qwen-Image Edit Plus takes at most 2 besides the "):
        run(make_backend(paths), request_for(edit["plus"], steps=2, init_image=str(path),
                                             reference_images=(str(path),) * 3))  # fmt: skip
    with pytest.raises(ModelError, match=r"Qwen-Image Edit reads one source image; reference images need"):
        run(make_backend(paths), request_for(edit["folder"], steps=2, init_image=str(path),
                                             reference_images=(str(path),)))  # fmt: skip


@pytest.mark.parametrize("masked", [False, True])
def test_image_k_of_an_edit_batch_is_the_lone_job_with_its_seed(paths, edit, tmp_path, masked):
    _, path = _image(tmp_path, "source.png")
    extra = {}
    if masked:
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[8:56, 8:56] = 255
        Image.fromarray(mask).save(tmp_path / "mask.png")
        extra = {"mask": str(tmp_path / "mask.png"), "strength": 0.9}
    request = request_for(edit["folder"], steps=2, cfg_scale=4.0, init_image=str(path), batch_size=2, **extra)
    batch, _ = run(make_backend(paths), request)
    lone, _ = run(make_backend(paths), replace(request, batch_size=1, seed=request.seed_for(0, 1)))
    # Batched matrix products may round one pixel level apart (as in test_batch_seeds.py).
    assert close(batch.images[1], lone.images[0])
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))


def test_edit_inpainting_of_another_aspect_keeps_its_previews_and_size(paths, edit, tmp_path):
    # The inpainting pipeline works at its own (~1 MP, here 64x64) size whatever the job's: previews unpack
    # its latents at that size, and the result comes back at the source's.
    Image.new("RGB", (96, 64), (40, 120, 200)).save(tmp_path / "wide.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    mask.save(tmp_path / "mask.png")
    request = request_for(
        edit["folder"], steps=2, cfg_scale=4.0, init_image=str(tmp_path / "wide.png"), mask=str(tmp_path / "mask.png"),
        width=96, height=64, mask_blur=0, strength=1.0,
    )  # fmt: skip
    batch, steps = run(make_backend(paths, preview_every=1), request)
    assert batch.images[0].size == (96, 64)
    assert [s.preview is not None for s in steps] == [True, True]


def test_strength_does_not_reach_an_instruction_edit(paths, edit, tmp_path):
    # The Edit pipeline has no strength: 0 is not "return the source" there, and any value gives one picture.
    source, path = _image(tmp_path, "source.png")
    zero, _ = run(make_backend(paths), request_for(edit["folder"], steps=2, init_image=str(path), strength=0.0))
    assert not np.array_equal(pixels(zero.images[0]), pixels(source))
    half, _ = run(make_backend(paths), request_for(edit["folder"], steps=2, init_image=str(path), strength=0.5))
    assert np.array_equal(pixels(zero.images[0]), pixels(half.images[0]))


def test_a_missing_reference_image_is_refused_before_the_model_loads(edit, tmp_path):
    from tests.e2e.test_cli import in_process

    _, source = _image(tmp_path, "source.png")
    code, _, err = in_process([
        "--home", str(tmp_path / "home"), "generate", "--model", str(edit["plus"]), "--prompt", "x", "--device",
        "cpu", "--init-image", str(source), "--reference-image", str(tmp_path / "cat.png"),
    ])  # fmt: skip
    assert code == 2 and "The reference image cat.png: it does not exist" in err, err
    assert "Loading" not in err  # refused before the model loads


def test_a_library_file_is_marked_as_edit_or_edit_plus(edit, tmp_path):
    """ComfyUI's Qwen-Image-Edit files carry no metadata: the user's choice (Library.choose_variant) says which."""
    from desktop.engine.library.index import Library

    library = Library(AppPaths.for_root(tmp_path / "home").ensure())
    state = dict(edit["pipe"].transformer.state_dict())
    file = save_transformer_file(state, tmp_path / "qwen_image_edit_2509.safetensors", prefix="model.diffusion_model.")
    record = library.import_path(file, "model")
    assert record.architecture.startswith("Qwen-Image") and "Edit" not in record.architecture
    assert library.choose_variant(record.name, "edit-plus").architecture.startswith("Qwen-Image Edit Plus")
    assert library.choose_variant(record.name, "edit").architecture.startswith("Qwen-Image Edit")
    assert "Edit" not in library.choose_variant(record.name, "").architecture


def test_the_chosen_variant_gives_the_edit_models_family_and_reference_images(edit, tmp_path):
    from desktop.engine.library.index import Library
    from desktop.engine.library.native_size import model_family, reference_limit

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    state = dict(edit["pipe"].transformer.state_dict())
    file = save_transformer_file(state, tmp_path / "qwen_image_edit.safetensors", prefix="model.diffusion_model.")
    record = library.import_path(file, "model")
    stored = library.path_of(record)
    assert (model_family(stored), reference_limit(stored), library.chosen_variant_of(stored)) == ("qwen-image", 0, "")
    library.choose_variant(record.name, "edit-plus")
    chosen = library.chosen_variant_of(stored)
    assert (model_family(stored, chosen), reference_limit(stored, chosen)) == ("qwen-image-edit-plus", 2)
    assert library.chosen_variants() == {record.name: "edit-plus"}
    assert library.chosen_variant_of(file) == ""  # the same file outside the library says what it says


def test_a_damaged_or_hand_edited_index_chooses_no_variant(edit, tmp_path):
    """The choice is optional: a damaged library index, or one edited by hand to hold a variant the family lacks,
    leaves every file running as it says rather than failing every job."""
    from desktop.engine.library.index import Library

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    state = dict(edit["pipe"].transformer.state_dict())
    file = save_transformer_file(state, tmp_path / "qwen_image_edit.safetensors", prefix="model.diffusion_model.")
    stored = library.path_of(library.choose_variant(library.import_path(file, "model").name, "edit"))
    index = next((tmp_path / "home").rglob("library.json"))
    text = index.read_text(encoding="utf-8")
    index.write_text(text.replace('"chosen_variant": "edit"', '"chosen_variant": "edit-pro"'), encoding="utf-8")
    assert (library.chosen_variant_of(stored), library.chosen_variants()) == ("", {})
    index.write_text("{ damaged", encoding="utf-8")
    assert (library.chosen_variant_of(stored), library.chosen_variants()) == ("", {})


def test_the_command_line_takes_the_chosen_variants_defaults(edit, tmp_path):
    """A library Qwen-Image file marked Edit Plus: `marble generate` without --steps runs Plus's model-card 40 steps
    (plain Qwen-Image's default is the UNet's 30)."""
    from desktop.engine.library.index import Library
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    state = dict(edit["pipe"].transformer.state_dict())
    file = save_transformer_file(state, tmp_path / "qwen_image_edit_2509.safetensors", prefix="model.diffusion_model.")
    record = library.choose_variant(library.import_path(file, "model").name, "edit-plus")
    _, source = _image(tmp_path, "source.png")
    code, _, err = in_process([
        "--home", str(tmp_path / "home"), "generate", "--model", record.name, "--prompt", "make it blue", "--seed", "3",
        "--device", "cpu", "--init-image", str(source), "--text-encoders", str(edit["plus"]),
        "--out", str(tmp_path / "out.png"),
    ])  # fmt: skip
    assert code == 0, err
    assert read_image_metadata(tmp_path / "out.png").request.steps == 40
