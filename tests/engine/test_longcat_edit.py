"""LongCat-Image-Edit (Meituan's instruction-edit model: LongCat-Image's transformer reading the source's latents beside
the noise, prompted through Qwen2.5-VL with the source itself): a tiny random model saved as its diffusers folder and
run offline through Marble, pixel-identical to bare diffusers with the same seed at the job's size; its file forms,
refusals, masks, batches and library route.

diffusers' LongCatImageEditPipeline always works at about 1 MP (its module's `calculate_dimensions`); Marble's jobs
work at the size asked for (families_longcat.instruction_class). While Marble runs, the tests make diffusers' own size
rule fail outright, so a job that fell back on it cannot pass; the bare pipeline is given the job's size through the
same rule."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import LongCatImageEditPipeline
from diffusers.pipelines.longcat_image import pipeline_longcat_image_edit
from PIL import Image
from safetensors.torch import load_file, save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_extras import close
from tests.support.tiny_longcat import build_tiny_longcat_edit, save_transformer
from tests.support.tiny_qwen_edit import save_edit_folder, tiny_processor

PREFIX = "model.diffusion_model."
WIDTH, HEIGHT = 96, 64  # not square: the working size must be the job's, not the source's aspect at 1 MP


def _one_megapixel(area, ratio):
    raise AssertionError("the job fell back on diffusers' ~1 MP working size")


@pytest.fixture(autouse=True)
def no_megapixel_fallback(monkeypatch):
    monkeypatch.setattr(pipeline_longcat_image_edit, "calculate_dimensions", _one_megapixel)


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("longcat-edit")
    pipe = build_tiny_longcat_edit()
    folder = save_edit_folder(pipe, tmp / "LongCat-Image-Edit", slot="text_processor")
    return {"pipe": pipe, "folder": folder, "tmp": tmp}


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def _source(tmp_path, name="source.png", flip=False):
    gradient = np.add.outer(np.arange(HEIGHT), np.arange(WIDTH)).astype(np.uint8) * 2
    if flip:
        gradient = gradient[:, ::-1]
    image = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1))
    image.save(tmp_path / name)
    return image, tmp_path / name


def _request(model, path, **changes):
    values = dict(steps=2, cfg_scale=4.5, init_image=str(path), width=WIDTH, height=HEIGHT)
    return request_for(model, **(values | changes))


def bare(folder, request, monkeypatch, **inputs) -> np.ndarray:
    """diffusers' pipeline from `folder` at the job's size (its size rule answering it, as Marble's call does)."""
    pipe = LongCatImageEditPipeline.from_pretrained(str(folder), local_files_only=True, text_processor=tiny_processor())
    return bare_with(pipe, request, monkeypatch, **inputs)


def bare_with(pipe, request, monkeypatch, **inputs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    with monkeypatch.context() as patch:
        patch.setattr(pipeline_longcat_image_edit, "calculate_dimensions",
                      lambda area, ratio: (request.width, request.height))  # fmt: skip
        image = pipe(
            prompt=request.prompt, negative_prompt=request.negative_prompt, guidance_scale=request.cfg_scale,
            num_inference_steps=request.steps, generator=torch.Generator("cpu").manual_seed(request.seed), **inputs,
        ).images[0]  # fmt: skip
    return pixels(image)


def test_an_edit_folder_is_detected_and_its_edit_matches_bare_diffusers_at_the_jobs_size(paths, edit, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    arch = detect_model(edit["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.label, arch.config_name) == (
        "longcat-image", "edit", "LongCat-Image Edit", "longcat-image"
    )  # fmt: skip
    assert model_family(edit["folder"]) == "longcat-image-edit"
    assert family_defaults("longcat-image-edit") == {"steps": 50, "cfg_scale": 4.5}
    source, path = _source(tmp_path)
    request = _request(edit["folder"], path)
    assert request.mode == "img2img"
    batch, steps = run(make_backend(paths, preview_every=1), request)
    assert batch.images[0].size == (WIDTH, HEIGHT)
    assert [step.preview is not None for step in steps] == [True, True]  # no strength: every step runs
    expected = bare(edit["folder"], request, monkeypatch, image=source)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Diffusers' size rule is its own again after the job.
    assert pipeline_longcat_image_edit.calculate_dimensions is _one_megapixel
    # The source conditions the edit: another source, another picture.
    _, other = _source(tmp_path, "other.png", flip=True)
    changed, _ = run(make_backend(paths), _request(edit["folder"], other))
    assert not np.array_equal(pixels(changed.images[0]), expected)


def test_an_edit_model_needs_a_source_and_reads_no_reference_images(paths, edit, tmp_path):
    with pytest.raises(ModelError, match=r"LongCat-Image Edit model: it edits a source image by instruction"):
        run(make_backend(paths), request_for(edit["folder"], steps=2, width=WIDTH, height=HEIGHT))
    _, path = _source(tmp_path)
    with pytest.raises(ModelError, match=r"LongCat-Image Edit reads one source image"):
        run(make_backend(paths), _request(edit["folder"], path, reference_images=(str(path),)))


def test_a_folder_without_its_processor_or_vision_tower_is_refused_by_name(paths, edit, tmp_path):
    _, path = _source(tmp_path)
    bare_folder = shutil.copytree(edit["folder"], tmp_path / "no-processor")
    shutil.rmtree(bare_folder / "text_processor")
    with pytest.raises(ModelError, match=r"no-processor cannot serve .*no text_processor/preprocessor_config\.json .*"
                                         r"meituan-longcat/LongCat-Image-Edit"):  # fmt: skip
        run(make_backend(paths), _request(bare_folder, path))
    # A processor folder holding the image processor's settings alone: the folder's tokenizer/ serves beside it.
    lean = shutil.copytree(edit["folder"], tmp_path / "lean")
    for file in (lean / "text_processor").iterdir():
        if file.name != "preprocessor_config.json":
            file.unlink()
    batch, _ = run(make_backend(paths), _request(lean, path))
    assert batch.images[0].size == (WIDTH, HEIGHT)
    blind = shutil.copytree(edit["folder"], tmp_path / "blind")
    weights = blind / "text_encoder" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("visual.")}, str(weights))
    with pytest.raises(ModelError, match=r"text_encoder has no vision tower"):
        run(make_backend(paths), _request(blind, path))


def test_a_transformer_file_is_the_edit_model_by_its_components_folder_or_metadata(paths, edit, tmp_path, monkeypatch):
    file = save_transformer(edit["pipe"], tmp_path / "longcat_image_edit_bf16.safetensors", comfy=True, prefix=PREFIX)
    assert detect_model(file).dit.variant == ""  # the tensors are LongCat-Image's
    source, path = _source(tmp_path)
    request = _request(file, path, text_encoders=str(edit["folder"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(edit["folder"], request, monkeypatch, image=source))
    state = load_file(str(file))
    for architecture in ("longcat-image-edit", "LongCat_Image_Edit"):
        save_file(state, str(tmp_path / "tagged.safetensors"), metadata={"modelspec.architecture": architecture})
        arch = detect_model(tmp_path / "tagged.safetensors")
        assert (arch.dit.variant, arch.dit.label) == ("edit", "LongCat-Image Edit")
    save_file(state, str(tmp_path / "base.safetensors"), metadata={"modelspec.architecture": "longcat-image"})
    assert detect_model(tmp_path / "base.safetensors").dit.variant == ""


def test_a_mask_keeps_the_edit_inside_it_and_strength_does_not_reach_it(paths, edit, tmp_path, monkeypatch):
    source, path = _source(tmp_path)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[16:48, 24:72] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    request = _request(edit["folder"], path, mask=str(tmp_path / "mask.png"), mask_blur=0, strength=0.5)
    batch, _ = run(make_backend(paths), request)
    result, inside = pixels(batch.images[0]), mask > 0
    assert np.array_equal(result[~inside], pixels(source)[~inside])
    assert np.array_equal(result[inside], bare(edit["folder"], request, monkeypatch, image=source)[inside])
    # No strength: 0 is not "keep the source" for an instruction edit.
    zero, _ = run(make_backend(paths), replace(request, strength=0.0))
    assert np.array_equal(pixels(zero.images[0]), result)


def test_image_k_of_a_batch_is_the_lone_job_with_its_seed(paths, edit, tmp_path):
    _, path = _source(tmp_path)
    request = _request(edit["folder"], path, batch_size=2)
    batch, _ = run(make_backend(paths), request)
    lone, _ = run(make_backend(paths), replace(request, batch_size=1, seed=request.seed_for(0, 1)))
    assert close(batch.images[1], lone.images[0])  # batched matrix products may round a few values a level apart
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))


def test_a_file_runs_with_the_full_qwen25_vl_from_the_library_and_the_folders_processor(edit, tmp_path, monkeypatch):
    """ComfyUI's Qwen2.5-VL 7B file with its vision tower and Flux's ae.safetensors from the library, the tokenizer and
    processor from the Edit folder: bare diffusers' picture. The text-only file is refused by name."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_qwen_encoders import save_comfy_qwen

    pipe = edit["pipe"]
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_7b.safetensors"), "encoder")
    text_only = save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_text.safetensors", vision=False, head=False)
    library.import_path(text_only, "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    state = load_file(str(save_transformer(pipe, tmp_path / "plain.safetensors", comfy=True, prefix=PREFIX)))
    model = tmp_path / "longcat_image_edit.safetensors"
    save_file(state, str(model), metadata={"modelspec.architecture": "longcat-image-edit"})
    source, path = _source(tmp_path)
    request = _request(model, path, text_encoders="qwen_2.5_vl_7b", vae="ae", tokenizer_folder=str(edit["folder"]),
                       model_config=str(edit["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(edit["folder"], request, monkeypatch, image=source))
    with pytest.raises(ModelError, match=r"'qwen_2\.5_vl_text' .* is the text-only Qwen2\.5-VL .*vision tower"):
        run(make_backend(paths), replace(request, text_encoders="qwen_2.5_vl_text"))


def test_a_diffusers_without_the_size_rule_is_refused_rather_than_run_at_another_size(paths, edit, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    _, path = _source(tmp_path)
    monkeypatch.delattr(pipeline_longcat_image_edit, "calculate_dimensions")
    with pytest.raises(ModelError, match=r"LongCat-Image-Edit pipeline works out its size in another way"):
        run(make_backend(paths), _request(edit["folder"], path))


def test_a_file_runs_with_library_files_alone_and_marbles_own_tokenizer_and_processor(tmp_path, monkeypatch):
    """The route of a ComfyUI user with three files (the Edit transformer, qwen_2.5_vl_7b, ae) and no folder: Marble's
    shipped Qwen tokenizer and its Qwen2VL image processor settings read the prompt and the source."""
    import transformers

    from desktop.engine.backends.families_qwen_edit import image_only_processor
    from desktop.engine.library.index import Library
    from desktop.engine.resources import Resources
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_dit import config_folder
    from tests.support.tiny_qwen_edit import tiny_vl_encoder
    from tests.support.tiny_qwen_encoders import save_comfy_qwen
    from tests.support.tiny_qwen_zimage import shipped_tokenizer

    base = build_tiny_longcat_edit()
    tokenizer = shipped_tokenizer()
    images = transformers.Qwen2VLImageProcessorPil.from_pretrained(str(Resources.default().tokenizers / "qwen"))
    pipe = LongCatImageEditPipeline(
        scheduler=base.scheduler, vae=base.vae, text_encoder=tiny_vl_encoder(3, shipped=True), tokenizer=tokenizer,
        text_processor=image_only_processor(images, tokenizer), transformer=base.transformer,
    )  # fmt: skip
    config = config_folder(pipe, tmp_path / "config")
    for reader in ("tokenizer", "text_processor"):  # a config folder only: the tokenizer must be Marble's own
        shutil.rmtree(config / reader, ignore_errors=True)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_7b.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    state = load_file(str(save_transformer(pipe, tmp_path / "plain.safetensors", comfy=True, prefix=PREFIX)))
    model = tmp_path / "longcat_image_edit.safetensors"
    save_file(state, str(model), metadata={"modelspec.architecture": "longcat-image-edit"})
    source, path = _source(tmp_path)
    request = _request(model, path, prompt='change the sign to say "OK"', text_encoders="qwen_2.5_vl_7b", vae="ae",
                       model_config=str(config))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_with(pipe, request, monkeypatch, image=source))


def test_a_lora_applies_to_the_edit_as_peft_applies_it_to_the_transformer(paths, edit, tmp_path, monkeypatch):
    """LongCat-Image's LoRAs (Flux.1's diffusers names, loaded through PEFT: flux_like_loras.py) on the Edit model."""
    from tests.support.tiny_dit_loras import lora_on

    tensors = lora_on(edit["pipe"].transformer, "", ("attn.to_q", "attn.to_k", "attn.to_v", "ff.net.2", "proj_mlp"))
    save_file(tensors, str(paths.loras / "style.safetensors"))
    source, path = _source(tmp_path)
    request = _request(edit["folder"], path, prompt="make it blue <lora:style:0.8>")
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    pipe = LongCatImageEditPipeline.from_pretrained(str(edit["folder"]), local_files_only=True,
                                                    text_processor=tiny_processor())  # fmt: skip
    pipe.transformer.load_lora_adapter(tensors, prefix="transformer", adapter_name="style")
    pipe.transformer.set_adapters(["style"], [0.8])
    plain = replace(request, prompt="make it blue")
    expected = bare_with(pipe, plain, monkeypatch, image=source)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare(edit["folder"], plain, monkeypatch, image=source))


def test_a_gguf_is_the_edit_model_by_its_components_folder(paths, edit, tmp_path, monkeypatch):
    """The GGUFs in circulation are converted from Comfy-Org's files and carry no ModelSpec metadata: the Edit folder
    given as `--text-encoders` makes one the Edit model (stored in F32 here, so the folder's own transformer is the
    expected one)."""
    from tests.support.tiny_dit import save_gguf
    from tests.support.tiny_longcat import comfy_names

    path = save_gguf(comfy_names(edit["pipe"].transformer.state_dict()), tmp_path / "LongCat-Image-Edit-F32.gguf",
                     quant="F32", arch="longcat")  # fmt: skip
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.quantization) == ("longcat-image", "", "F32")
    source, image = _source(tmp_path)
    request = _request(path, image, text_encoders=str(edit["folder"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(edit["folder"], request, monkeypatch, image=source))


def test_a_library_file_without_metadata_runs_as_the_edit_model_the_user_chose(edit, tmp_path, monkeypatch):
    """ComfyUI's repackaged Edit files carry no metadata saying what they are, and the route of library files names no
    Edit folder: the user marks the library's file (Library.choose_variant; `marble models variant`, the Library
    window). The job then runs the Edit model, and back as the file says once the choice is taken back."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_qwen_encoders import save_comfy_qwen

    pipe = edit["pipe"]
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_7b.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    file = save_transformer(pipe, tmp_path / "longcat_image_edit_bf16.safetensors", comfy=True, prefix=PREFIX)
    record = library.import_path(file, "model")
    assert (record.architecture, record.chosen_variant) == ("LongCat-Image", "")
    source, path = _source(tmp_path)
    request = _request(record.name, path, text_encoders="qwen_2.5_vl_7b", vae="ae",
                       tokenizer_folder=str(edit["folder"]), model_config=str(edit["folder"]))  # fmt: skip
    backend = make_backend(paths)
    base, _ = run(backend, request)
    expected = bare(edit["folder"], request, monkeypatch, image=source)
    assert not np.array_equal(pixels(base.images[0]), expected)  # LongCat-Image's image to image
    chosen = library.choose_variant(record.name, "edit")
    assert (chosen.architecture, chosen.chosen_variant) == ("LongCat-Image Edit", "edit")
    assert library.get("model", record.name).chosen_variant == "edit"  # kept in the index
    batch, _ = run(backend, request)  # the same backend loads again: the choice is part of what it loaded
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The choice is the library file's: the same file named by a path elsewhere runs as the file says.
    (tmp_path / "elsewhere").mkdir()
    elsewhere = shutil.copy(file, tmp_path / "elsewhere" / file.name)
    copy, _ = run(backend, replace(request, model=str(elsewhere)))
    assert np.array_equal(pixels(copy.images[0]), pixels(base.images[0]))
    library.choose_variant(record.name, "")
    again, _ = run(backend, request)
    assert np.array_equal(pixels(again.images[0]), pixels(base.images[0]))


def test_only_files_whose_tensors_cannot_tell_take_a_chosen_variant(edit, tmp_path):
    from desktop.engine.library.index import Library
    from tests.e2e.test_cli import in_process
    from tests.support.tiny_dit import build_tiny_flux, save_bfl_file

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    longcat = library.import_path(save_transformer(edit["pipe"], tmp_path / "longcat.safetensors"), "model")
    with pytest.raises(ModelError, match=r"'edit-plus' is not a variant of longcat: choose '' \(as the file says\), "
                                         r"'edit'"):  # fmt: skip
        library.choose_variant(longcat.name, "edit-plus")
    flux = library.import_path(save_bfl_file(build_tiny_flux(), tmp_path / "flux.safetensors"), "model")
    with pytest.raises(ModelError, match=r"flux is a Flux\.1 .*model, which its tensors tell"):
        library.choose_variant(flux.name, "edit")
    folder = library.import_path(edit["folder"], "model")
    with pytest.raises(ModelError, match=r"is a diffusers folder: its model_index\.json says"):
        library.choose_variant(folder.name, "")
    home = ["--home", str(tmp_path / "home")]
    code, out, err = in_process(["models", "variant", "longcat", *home])
    assert code == 0 and [line.split()[:2] for line in out.splitlines()] == [["*", "base"], ["edit", "LongCat-Image"]]
    code, _, err = in_process(["models", "variant", "longcat", "edit", *home])
    assert code == 0 and "longcat is now run as LongCat-Image Edit" in err, err
    code, out, _ = in_process(["models", "variant", "longcat", *home])
    assert [line.split()[0] for line in out.splitlines()] == ["base", "*"]
    code, _, err = in_process(["models", "variant", "longcat", "base", *home])
    assert code == 0 and "longcat is now run as LongCat-Image." in err, err
    code, _, err = in_process(["models", "variant", "flux", "edit", *home])
    assert code != 0 and "which its tensors tell" in err
