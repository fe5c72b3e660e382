"""FLUX.3's prompt rewriter (backends/prompt_rewriter.py): a tiny random Qwen3.5 saved as Black Forest Labs ship theirs,
its caption checked against transformers' own greedy generation, then run through the backend, the runner and the
command line: the picture is made from the caption, and the caption is what the image records."""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen3_5ForConditionalGeneration

from desktop.engine.backends.base import Waiting
from desktop.engine.backends.layout_captions import layout_request, locked_rows, reconciled, split_table
from desktop.engine.backends.prompt_rewriter import PromptRewriter, canvas_line
from desktop.engine.errors import Cancelled, InvalidRequest, ModelError, OutOfMemory
from desktop.engine.paths import AppPaths
from desktop.engine.request import LayoutBox
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_flux3 import build_tiny_flux3, save_folder
from tests.support.tiny_rewriter import SYSTEM_PROMPTS, save_rewriter

TOKENS = 24


@pytest.fixture(scope="module")
def rewriter_folder(tmp_path_factory):
    return save_rewriter(tmp_path_factory.mktemp("rewriter") / "flux-3-image-klein-pup")


@pytest.fixture(scope="module")
def flux3(tmp_path_factory):
    pipe = build_tiny_flux3()
    return {"pipe": pipe, "folder": save_folder(pipe, tmp_path_factory.mktemp("flux3") / "FLUX.3-base")}


def transformers_caption(folder, turn: str, tokens: int = TOKENS, mode: str = "t2i", **template) -> str:
    """The caption as transformers writes it, apart from Marble: the mode's system prompt (t2i), the turn, thinking
    off, greedy."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[mode]}, {"role": "user", "content": turn}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", **({"enable_thinking": False} | template))  # fmt: skip
    written = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(written[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def without_controls(text: str) -> str:
    """The caption as Marble keeps it: control characters but line breaks and tabs, bidi controls and line
    separators dropped, ends stripped."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]", "",
                  text).strip()  # fmt: skip


def test_the_caption_is_the_models_greedy_answer_to_the_system_prompt_and_request(rewriter_folder):
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    caption = rewriter.rewrite(rewriter_folder, "a red fox", 64, 32, "cpu", torch.float32)
    assert caption and caption != "a red fox"
    raw = transformers_caption(rewriter_folder, "TARGET CANVAS: 2:1\na red fox")
    assert caption == without_controls(raw)
    # This random model writes a control character (\x1d), which a prompt must not carry into the recipe.
    assert raw.strip() != caption and not any(char < " " and char not in "\n\t" for char in caption)
    # Each part of the conversation counts: thinking left on, the canvas line left out, another request.
    thinking = transformers_caption(rewriter_folder, "TARGET CANVAS: 2:1\na red fox", enable_thinking=True)
    assert caption != without_controls(thinking)
    assert caption != without_controls(transformers_caption(rewriter_folder, "a red fox"))
    square = rewriter.rewrite(rewriter_folder, "a red fox", 64, 64, "cpu", torch.float32)
    assert square == without_controls(transformers_caption(rewriter_folder, "a red fox"))


def test_the_captions_are_diffusers_upsamplers_own(rewriter_folder, monkeypatch):
    """diffusers' FLUX.3 prompt upsampler (its modular block's function) over the same model and processor, given
    the folder's system prompts (diffusers' own are thousands of characters, after which this random model writes the
    same caption whatever follows): the same caption, for text to image (square: diffusers names no canvas) and for
    an edit of one and of two reference pictures, prepared as diffusers prepares them."""
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    from desktop.engine.backends.families_qwen21 import load_processor

    folder = rewriter_folder
    monkeypatch.setattr(theirs, "SYSTEM_PROMPTS", SYSTEM_PROMPTS)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    processor = load_processor(folder)
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    fox = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1100, 3), dtype=np.uint8))
    cat = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 40, 4), dtype=np.uint8), "RGBA")
    for pictures in ([], [fox], [fox, cat]):
        ours = rewriter.rewrite(folder, "make it night", 64, 64, "cpu", torch.float32, references=pictures)
        expected = theirs.upsample_prompt(model, processor, "make it night", max_new_tokens=TOKENS,
                                          images=theirs.prepare_references(pictures) if pictures else None)
        assert ours == without_controls(expected), len(pictures)
    # The processor is shown the pictures exactly as diffusers prepares them (each under two pictures' budget here).
    shown = []
    template = rewriter._processor.apply_chat_template
    rewriter._processor.apply_chat_template = lambda messages, **kw: shown.extend(
        part["image"] for part in messages[1]["content"] if part["type"] == "image") or template(messages, **kw)
    rewriter.rewrite(folder, "make it dawn", 64, 64, "cpu", torch.float32, references=[fox, cat])
    expected = theirs.prepare_references([fox, cat])
    assert [picture.size for picture in shown] == [picture.size for picture in expected] == [(800, 640), (32, 64)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(shown, expected, strict=True))
    # Kept captions are told apart by their pictures: another picture is written for again, the same one is not.
    runs = []
    generate = rewriter._model.generate
    rewriter._model.generate = lambda *args, **kwargs: runs.append(1) or generate(*args, **kwargs)
    rewriter.rewrite(folder, "make it night", 64, 64, "cpu", torch.float32, references=[cat])
    rewriter.rewrite(folder, "make it night", 64, 64, "cpu", torch.float32, references=[fox])
    assert runs == [1]


def test_reference_pictures_are_sized_as_the_rewriter_saw_them():
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    from desktop.engine.backends.prompt_rewriter import prepared_reference, reference_size

    sizes = [(1024, 1024), (1920, 1080), (4000, 3000), (50, 9000), (33, 31), (16, 16), (3000, 40), (725, 724),
             (100, 20000), (40000, 200), (8000, 40)]  # the last three: 200:1, narrowest allowed
    for count in (1, 2, 3, 10):
        for width, height in sizes:
            assert reference_size(width, height, count) == theirs.get_reference_size(width, height, count)
    with pytest.raises(InvalidRequest, match="too narrow"):
        reference_size(10, 3000, 1)
    picture = Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 500, 4), dtype=np.uint8), "RGBA")
    for count in (1, 3):
        (expected,) = theirs.prepare_references([picture] * count)[:1]
        assert np.array_equal(np.asarray(prepared_reference(picture, count)), np.asarray(expected))
    # A photo turned by its EXIF orientation is shown upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = io.BytesIO()
    picture.convert("RGB").save(data, format="JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data.getvalue())) as photo:
        prepared = prepared_reference(photo, 1)
        assert prepared.size == (288, 512)  # 300 x 500 upright, sides to the nearest 32
        assert np.array_equal(np.asarray(prepared), np.asarray(theirs.prepare_references(photo)[0]))


def test_the_canvas_line_names_the_ratio_in_lowest_terms():
    assert canvas_line(1024, 576) == "TARGET CANVAS: 16:9"
    assert canvas_line(832, 1216) == "TARGET CANVAS: 13:19"
    assert canvas_line(768, 768) == ""


def test_a_request_is_rewritten_once(rewriter_folder, tmp_path):
    folder = shutil.copytree(rewriter_folder, tmp_path / "rewriter")
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    first = rewriter.rewrite(folder, "a lighthouse", 64, 64, "cpu", torch.float32)
    shutil.rmtree(folder)
    rewriter.unload()  # nothing left to load or run: the caption comes from memory
    assert rewriter.rewrite(folder, "a lighthouse", 64, 64, "cpu", torch.float32) == first
    with pytest.raises(ModelError, match="does not exist"):
        rewriter.rewrite(folder, "a lighthouse at night", 64, 64, "cpu", torch.float32)


def test_cancel_stops_the_writing(rewriter_folder):
    calls = []

    def cancelled() -> bool:  # Cancel pressed while the third token is written
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled, match="rewritten"):
        PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "a fox", 64, 64, "cpu", torch.float32,
                                                      cancelled=cancelled)  # fmt: skip
    assert len(calls) == 4  # asked after each token, and the writing stopped there: not after all 24


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no prompts", "has no system_prompts.json"),
        ("no t2i prompt", "has no 't2i' system prompt"),
        ("blank t2i prompt", "has no 't2i' system prompt"),
        ("prompts not json", "could not be read as JSON"),
        ("another model", "holds a qwen3, not FLUX.3's prompt rewriter"),
        ("no config", "has no config.json"),
        ("no weights", "could not be loaded"),
        ("no chat template", "has no chat template"),
    ],
)
def test_a_folder_that_is_not_the_rewriter_is_refused_by_name(rewriter_folder, tmp_path, damage, message):
    folder = shutil.copytree(rewriter_folder, tmp_path / "pup")
    prompts = folder / "system_prompts.json"
    if damage == "no prompts":
        prompts.unlink()
    elif damage == "no t2i prompt":
        prompts.write_text(json.dumps({"i2i": "edit"}), encoding="utf-8")
    elif damage == "blank t2i prompt":
        prompts.write_text(json.dumps({"t2i": " \n"}), encoding="utf-8")
    elif damage == "prompts not json":
        prompts.write_text("{t2i", encoding="utf-8")
    elif damage == "another model":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "qwen3"}))
    elif damage == "no config":
        (folder / "config.json").unlink()
    elif damage == "no weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no chat template":
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            path = folder / name
            if path.is_file() and name.endswith(".jinja"):
                path.unlink()
            elif path.is_file():
                config = json.loads(path.read_text())
                config.pop("chat_template", None)
                path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message) as caught:
        PromptRewriter(max_new_tokens=TOKENS).rewrite(folder, "a fox", 64, 64, "cpu", torch.float32)
    assert "pup" in str(caught.value)


# ------------------------------------------------------------------------------------ through the backend


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def rewriting_backend(paths, folder):
    """The backend the window builds with the Settings' folder, its rewriter writing short captions."""
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.resources import Resources

    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), prompt_rewriter=str(folder),
                            rewriter=PromptRewriter(max_new_tokens=TOKENS))  # fmt: skip


def test_the_picture_is_made_from_the_caption_with_the_loras_tags_kept(paths, flux3, rewriter_folder):
    request = request_for(flux3["folder"], prompt="a red fox <lora:style:0.5>", steps=2, cfg_scale=3.0,
                          rewrite_prompt=True)  # fmt: skip
    backend = rewriting_backend(paths, rewriter_folder)
    backend.load(request)
    seen = []
    # The LoRA is not in the library: the job is refused after the caption is written, naming it.
    with pytest.raises(ModelError, match="style"):
        backend.generate(request, 0, seen.append, _token())
    assert seen[0].waiting is Waiting.REWRITING_PROMPT and seen[0].step == 0
    caption = PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "a red fox", 64, 64, "cpu",
                                                            torch.float32)  # fmt: skip
    untagged = replace(request, prompt="a red fox")
    batch, steps = run(backend, untagged)
    assert batch.rewritten_prompt == caption
    assert steps[0].waiting is Waiting.REWRITING_PROMPT and [s.step for s in steps[1:]] == [1, 2]
    plain, _ = run(make_backend(paths), replace(untagged, prompt=caption, rewrite_prompt=False))
    assert np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))
    as_typed, _ = run(make_backend(paths), replace(untagged, rewrite_prompt=False))
    assert not np.array_equal(pixels(batch.images[0]), pixels(as_typed.images[0]))


def _token():
    from desktop.engine.jobs import CancelToken

    return CancelToken()


def test_other_models_and_a_missing_folder_are_refused_clearly(paths, flux3, rewriter_folder, tmp_path):
    from tests.support.tiny_dit import build_tiny_flux, save_pipeline
    from tests.support.tiny_models import build_tiny_sd15, save_diffusers

    request = request_for(flux3["folder"], steps=1, rewrite_prompt=True)
    with pytest.raises(InvalidRequest, match="No prompt rewriter is set: choose its folder in Settings"):
        run(make_backend(paths), request)
    sd = save_diffusers(build_tiny_sd15(), tmp_path / "sd15")
    with pytest.raises(InvalidRequest, match="The prompt rewriter is FLUX.3's; Stable Diffusion models read"):
        run(rewriting_backend(paths, rewriter_folder), request_for(sd, steps=1, rewrite_prompt=True))
    flux = save_pipeline(build_tiny_flux(), tmp_path / "flux1")  # another diffusion transformer
    with pytest.raises(InvalidRequest, match="The prompt rewriter is FLUX.3's; Flux.1 dev models read"):
        run(rewriting_backend(paths, rewriter_folder), request_for(flux, steps=1, rewrite_prompt=True))
    with pytest.raises(InvalidRequest, match="The prompt is empty"):
        run(rewriting_backend(paths, rewriter_folder), replace(request, prompt=" <lora:style:0.5> "))
    with pytest.raises(InvalidRequest, match="text to image"):
        request_for(flux3["folder"], rewrite_prompt=True, init_image=str(tmp_path / "source.png"))
    with pytest.raises(InvalidRequest, match="true or false"):
        request_for(flux3["folder"], rewrite_prompt="yes")


def test_the_command_line_records_the_caption_as_the_prompt(flux3, rewriter_folder, tmp_path, monkeypatch):
    """`marble generate --rewrite-prompt --prompt-rewriter DIR`: the PNG's recipe holds the caption as its prompt
    and rewriting off, so it makes the same picture again; the request as typed is kept beside it."""
    from desktop.engine.backends import prompt_rewriter
    from desktop.engine.metadata import PARAMETERS_CHUNK, read_image_metadata
    from tests.e2e.test_cli import in_process

    # A random model's caption runs to the limit: 3584 tokens would take 15 s here.
    monkeypatch.setattr(prompt_rewriter, "MAX_NEW_TOKENS", TOKENS)
    out = tmp_path / "fox.png"
    code, _, err = in_process(["generate", "--prompt", "a red fox", "--seed", "3", "--width", "64", "--height",
                               "64", "--steps", "2", "--device", "cpu", "--no-preview", "--home",
                               str(tmp_path / "home"), "--model", str(flux3["folder"]), "--rewrite-prompt",
                               "--prompt-rewriter", str(rewriter_folder), "--out", str(out)])  # fmt: skip
    assert code == 0, err
    assert "Rewriting the prompt" in err
    caption = PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "a red fox", 64, 64, "cpu",
                                                            torch.float32)  # fmt: skip
    recorded = read_image_metadata(out).request
    assert (recorded.prompt, recorded.rewrite_prompt) == (caption, False)
    with Image.open(out) as image:
        chunks = dict(image.text)
        assert chunks[PARAMETERS_CHUNK].startswith(caption + "\n")
        assert json.loads(chunks["marble"])["prompt_template"]["prompt"] == "a red fox"
        plain, _ = run(make_backend(AppPaths.for_root(tmp_path / "plain").ensure()),
                       replace(recorded, model=str(flux3["folder"])))
        assert np.array_equal(pixels(image), pixels(plain.images[0]))
    # The window's Settings folder serves the command line too, when the flag is absent.
    from desktop.engine.settings import SettingsStore

    settings = SettingsStore.open(AppPaths.for_root(tmp_path / "home").settings_file)
    settings.set("prompt_rewriter", str(rewriter_folder))
    settings.save()
    again = tmp_path / "again.png"
    code, _, err = in_process(["generate", "--prompt", "a red fox", "--seed", "3", "--width", "64", "--height", "64",
                               "--steps", "2", "--device", "cpu", "--no-preview", "--home", str(tmp_path / "home"),
                               "--model", str(flux3["folder"]), "--rewrite-prompt", "--out", str(again)])  # fmt: skip
    assert code == 0, err
    assert read_image_metadata(again).request.prompt == caption
    # `marble info` shows both: the caption the picture was made from, and the request as typed.
    code, shown, err = in_process(["info", str(out), "--home", str(tmp_path / "home")])
    assert code == 0, err
    assert "Prompt:\n" + caption in shown and "Prompt as typed:\na red fox\n" in shown


def test_unloading_the_model_lets_the_rewriter_go_too(paths, flux3, rewriter_folder, tmp_path):
    """The window's "unload" frees the rewriter's memory with the model's: the next caption loads it again."""
    folder = shutil.copytree(rewriter_folder, tmp_path / "pup")
    backend = rewriting_backend(paths, folder)
    run(backend, request_for(flux3["folder"], prompt="a fox", steps=1, cfg_scale=3.0, rewrite_prompt=True))
    backend.unload()
    shutil.rmtree(folder)
    with pytest.raises(ModelError, match="does not exist"):
        run(backend, request_for(flux3["folder"], prompt="a cat", steps=1, cfg_scale=3.0, rewrite_prompt=True))


def test_running_out_of_memory_gives_the_device_back_and_says_what_to_do(rewriter_folder, monkeypatch):
    """A GPU too full for the rewriter beside the model (a CUDA out-of-memory error, raised here by the generation):
    a clear error naming the Offload memory mode, and the rewriter back on the CPU."""
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    rewriter.rewrite(rewriter_folder, "a fox", 64, 64, "cpu", torch.float32)
    moves = []
    model = rewriter._model
    real_to = model.to

    def to(device, *args, **kwargs):
        moves.append(str(device))
        return real_to(device, *args, **kwargs)

    def generate(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "to", to)
    monkeypatch.setattr(model, "generate", generate)
    with pytest.raises(OutOfMemory, match="choose the Offload memory mode") as caught:
        rewriter.rewrite(rewriter_folder, "a cat", 64, 64, "cpu", torch.float32)
    assert "its 0 GB" in str(caught.value) and moves == ["cpu", "cpu"]


def test_with_reference_pictures_the_caption_is_written_from_them(paths, flux3, rewriter_folder, tmp_path):
    """FLUX.3's editing (reference pictures beside the noise): the rewriter sees the pictures the job reads, and the
    picture is made from its caption with the same references."""
    path = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    request = request_for(flux3["folder"], prompt="make it night", steps=2, cfg_scale=3.0, rewrite_prompt=True,
                          reference_images=(str(path),))  # fmt: skip
    batch, _ = run(rewriting_backend(paths, rewriter_folder), request)
    with Image.open(path) as picture:
        caption = PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "make it night", 64, 64, "cpu",
                                                                torch.float32, references=[picture.copy()])  # fmt: skip
    assert batch.rewritten_prompt == caption
    assert caption != PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "make it night", 64, 64, "cpu",
                                                                    torch.float32)  # fmt: skip
    plain, _ = run(make_backend(paths), replace(request, prompt=caption, rewrite_prompt=False))
    assert np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))


def test_an_edit_needs_the_processors_settings_and_the_i2i_prompt(rewriter_folder, tmp_path):
    """A folder fit for text to image that lacks what an edit needs is refused naming it, when an edit asks."""
    folder = shutil.copytree(rewriter_folder, tmp_path / "pup")
    picture = Image.new("RGB", (64, 64), "red")
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    assert rewriter.rewrite(folder, "a fox", 64, 64, "cpu", torch.float32)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="pup has no preprocessor_config.json"):
        rewriter.rewrite(folder, "a fox", 64, 64, "cpu", torch.float32, references=[picture])
    shutil.copy(rewriter_folder / "preprocessor_config.json", folder)
    (folder / "system_prompts.json").write_text(json.dumps({"t2i": SYSTEM_PROMPTS["t2i"]}), encoding="utf-8")
    with pytest.raises(ModelError, match="has no 'i2i' system prompt"):
        rewriter.rewrite(folder, "a fox", 64, 64, "cpu", torch.float32, references=[picture])


FOX_BOX = LayoutBox("a red fox sitting", 0.1, 0.2, 0.5, 0.9)
MOON_BOX = LayoutBox("a full moon", 0.7, 0.05, 0.9, 0.25)
# The cup reference picture 1 shows at its bottom left, moved to the right and made larger.
CUP_BOX = LayoutBox("the red cup", 0.55, 0.4, 0.95, 0.95, reference=1, source=(0.05, 0.6, 0.3, 0.9))


def test_layout_captions_are_diffusers_upsamplers_own(rewriter_folder, monkeypatch):
    """With layout boxes the caption is diffusers' upsampler's with the same boxes (its `boxes`, 0-1 in BFL's
    order): for text to image (the t2i_bbox system prompt, the layout request) and for an edit (i2i_bbox, the boxes
    as new content of the target, the layout scaffold). It ends with the user's boxes on the 0-1000 grid."""
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    from desktop.engine.backends.families_qwen21 import load_processor

    folder = rewriter_folder
    monkeypatch.setattr(theirs, "SYSTEM_PROMPTS", SYSTEM_PROMPTS)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    processor = load_processor(folder)
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    boxes = [FOX_BOX, MOON_BOX]
    t2i = [{"desc": box.description, "bbox": [box.top, box.left, box.bottom, box.right]} for box in boxes]
    ours = rewriter.rewrite(folder, "a fox under the moon", 64, 64, "cpu", torch.float32, boxes=boxes)
    expected = theirs.upsample_prompt(model, processor, "a fox under the moon", boxes=t2i, max_new_tokens=TOKENS)
    assert ours == without_controls(expected)
    assert ours != rewriter.rewrite(folder, "a fox under the moon", 64, 64, "cpu", torch.float32)
    assert split_table(ours)[1][:2] == locked_rows(boxes, edit=False)
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    edit = [{"desc": FOX_BOX.description, "from": "target",
             "tgt_bbox": [FOX_BOX.top, FOX_BOX.left, FOX_BOX.bottom, FOX_BOX.right]}]  # fmt: skip
    ours = rewriter.rewrite(folder, "add a fox", 64, 64, "cpu", torch.float32, references=[picture], boxes=[FOX_BOX])
    expected = theirs.upsample_prompt(model, processor, "add a fox", images=theirs.prepare_references([picture]),
                                      boxes=edit, max_new_tokens=TOKENS)  # fmt: skip
    assert ours == without_controls(expected)
    # An element of the picture moved: its box there (src_bbox) and in the result.
    moved = edit + [{"desc": CUP_BOX.description, "from": "ref_image_0", "src_bbox": [0.6, 0.05, 0.9, 0.3],
                     "tgt_bbox": [CUP_BOX.top, CUP_BOX.left, CUP_BOX.bottom, CUP_BOX.right]}]  # fmt: skip
    ours = rewriter.rewrite(folder, "add a fox, move the cup", 64, 64, "cpu", torch.float32, references=[picture],
                            boxes=[FOX_BOX, CUP_BOX])  # fmt: skip
    expected = theirs.upsample_prompt(model, processor, "add a fox, move the cup", max_new_tokens=TOKENS,
                                      images=theirs.prepare_references([picture]), boxes=moved)  # fmt: skip
    assert ours == without_controls(expected)
    assert split_table(ours)[1][1] == {"id": "obj_2", "from": "ref_image_0", "src_bbox": [600, 50, 900, 300],
                                       "tgt_bbox": [400, 550, 950, 950], "desc": "the red cup"}  # fmt: skip
    # The edit's conversation is the layout one (the random model alone would not tell): the i2i_bbox prompt, the
    # picture, then the layout scaffold around the layout request.
    asked = []
    template = rewriter._processor.apply_chat_template
    rewriter._processor.apply_chat_template = lambda messages, **kw: asked.append(messages) or template(messages, **kw)
    rewriter.rewrite(folder, "add a hat", 64, 64, "cpu", torch.float32, references=[picture], boxes=[FOX_BOX])
    (system, user), = asked
    assert system["content"] == [{"type": "text", "text": SYSTEM_PROMPTS["i2i_bbox"]}]
    assert [part["type"] for part in user["content"]] == ["image", "text"]
    assert user["content"][1]["text"] == theirs.I2I_SCAFFOLD[True].format(
        instruction=theirs.format_layout_request("add a hat", theirs.boxes_to_canvas(edit)))
    assert split_table(ours)[1][0] == {"id": "obj_1", "from": "target", "src_bbox": None,
                                       "tgt_bbox": [200, 100, 900, 500], "desc": "a red fox sitting"}  # fmt: skip


def test_a_layout_on_a_wide_canvas_names_it_before_the_request(rewriter_folder, tmp_path):
    """The layout system prompt places boxes by the canvas's ratio: the canvas line comes first, then the layout
    request. A folder without the layout system prompt is refused naming it."""
    rewriter = PromptRewriter(max_new_tokens=TOKENS)
    rewriter.rewrite(rewriter_folder, "a fox", 64, 64, "cpu", torch.float32)
    asked = []  # the conversations the tokenizer renders (past the long layout request, this random model writes
    # the same caption whatever the system prompt says)
    template = rewriter._tokenizer.apply_chat_template
    rewriter._tokenizer.apply_chat_template = lambda messages, **kw: asked.append(messages) or template(messages, **kw)
    ours = rewriter.rewrite(rewriter_folder, "a fox", 64, 32, "cpu", torch.float32, boxes=[FOX_BOX])
    rows = locked_rows([FOX_BOX], edit=False)
    turn = "TARGET CANVAS: 2:1\n" + layout_request("a fox", rows)
    assert asked == [[{"role": "system", "content": SYSTEM_PROMPTS["t2i_bbox"]}, {"role": "user", "content": turn}]]
    raw = transformers_caption(rewriter_folder, turn, mode="t2i_bbox")
    assert ours == reconciled(without_controls(raw), rows)
    folder = shutil.copytree(rewriter_folder, tmp_path / "pup")
    (folder / "system_prompts.json").write_text(json.dumps({"t2i": SYSTEM_PROMPTS["t2i"]}), encoding="utf-8")
    with pytest.raises(ModelError, match="has no 't2i_bbox' system prompt \\(layout boxes need it\\)"):
        PromptRewriter(max_new_tokens=TOKENS).rewrite(folder, "a fox", 64, 64, "cpu", torch.float32,
                                                      boxes=[FOX_BOX])  # fmt: skip


def test_the_command_line_places_layout_boxes(flux3, rewriter_folder, tmp_path, monkeypatch):
    """`marble generate --rewrite-prompt --layout-box ...`: the recorded prompt is the layout caption, ending with
    the box's row on the grid; the recipe asks for no rewriting and no boxes, and makes the same picture. Boxes
    without rewriting are refused."""
    from desktop.engine.backends import prompt_rewriter
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    monkeypatch.setattr(prompt_rewriter, "MAX_NEW_TOKENS", TOKENS)
    out = tmp_path / "fox.png"
    common = ["generate", "--prompt", "a red fox", "--seed", "3", "--width", "64", "--height", "64", "--steps", "2",
              "--device", "cpu", "--no-preview", "--home", str(tmp_path / "home"), "--model", str(flux3["folder"]),
              "--layout-box", "0.1,0.2,0.5,0.9: a red fox sitting", "--prompt-rewriter", str(rewriter_folder)]
    code, _, err = in_process([*common, "--rewrite-prompt", "--out", str(out)])
    assert code == 0, err
    caption = PromptRewriter(max_new_tokens=TOKENS).rewrite(rewriter_folder, "a red fox", 64, 64, "cpu",
                                                            torch.float32, boxes=[FOX_BOX])  # fmt: skip
    recorded = read_image_metadata(out).request
    assert (recorded.prompt, recorded.rewrite_prompt, recorded.layout_boxes) == (caption, False, ())
    assert split_table(recorded.prompt)[1] == locked_rows([FOX_BOX], edit=False)
    with Image.open(out) as image:  # Marble's own chunk too (a request it could not take would fall back to A1111's)
        written = json.loads(image.text["marble"])["request"]
        assert (written["prompt"], written["rewrite_prompt"], written["layout_boxes"]) == (caption, False, [])
    plain, _ = run(make_backend(AppPaths.for_root(tmp_path / "plain").ensure()),
                   replace(recorded, model=str(flux3["folder"])))  # fmt: skip
    with Image.open(out) as image:
        assert np.array_equal(pixels(image), pixels(plain.images[0]))
    code, _, err = in_process([*common, "--out", str(tmp_path / "plain.png")])
    assert code != 0 and "turn rewriting on" in err and "Traceback" not in err


def test_the_command_line_moves_an_element_of_a_reference_picture(flux3, rewriter_folder, tmp_path, monkeypatch):
    """`--layout-move REF:FROM:TO:TEXT` with `--reference-image`: the caption's table moves the element from its box
    in the picture (ref_image_0) to its box in the result, after the --layout-box rows; a move from a picture the
    job does not have is refused by number, without a traceback."""
    from desktop.engine.backends import prompt_rewriter
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    monkeypatch.setattr(prompt_rewriter, "MAX_NEW_TOKENS", TOKENS)
    picture = tmp_path / "table.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "moved.png"
    common = ["generate", "--prompt", "move the cup", "--seed", "3", "--width", "64", "--height", "64", "--steps", "1",
              "--device", "cpu", "--no-preview", "--home", str(tmp_path / "home"), "--model", str(flux3["folder"]),
              "--reference-image", str(picture), "--rewrite-prompt", "--prompt-rewriter", str(rewriter_folder),
              "--layout-box", "0.1,0.2,0.5,0.9: a red fox sitting"]  # fmt: skip
    code, _, err = in_process([*common, "--layout-move", "1:0.05,0.6,0.3,0.9:0.55,0.4,0.95,0.95:the red cup",
                               "--out", str(out)])  # fmt: skip
    assert code == 0, err
    rows = split_table(read_image_metadata(out).request.prompt)[1]
    assert rows[:2] == locked_rows([FOX_BOX, CUP_BOX], edit=True)[:1] + [
        {"id": "obj_2", "from": "ref_image_0", "src_bbox": [600, 50, 900, 300], "tgt_bbox": [400, 550, 950, 950],
         "desc": "the red cup"}]  # fmt: skip
    code, _, err = in_process([*common, "--layout-move", "2:0,0,1,1:0,0,1,1:the cup", "--out", str(out)])
    assert code != 0 and "takes an element from reference 2, but the job has 1 reference picture" in err
    assert "Traceback" not in err
