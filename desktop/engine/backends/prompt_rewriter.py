"""FLUX.3's prompt rewriter: a short request expanded into the detailed caption the model was trained on.

Black Forest Labs ship it as a separate model (a Qwen3.5 fine-tune, `black-forest-labs/flux-3-image-klein-pup`) with
its system prompts beside the weights in `system_prompts.json`, one per mode; diffusers runs it as the first block
of its modular FLUX.3 graph. Marble runs it only when asked (`GenerationRequest.rewrite_prompt`), for text to image:
one greedy generation (so the same request always gives the same caption), the "t2i" system prompt read from the
folder, the request as the user turn of the tokenizer's chat template with thinking off. A canvas that is not square
is named on a first line (`TARGET CANVAS: W:H`), which the t2i system prompt says it may receive. With reference
pictures (FLUX.3's editing) it writes from them: the "i2i" system prompt, the pictures as the rewriter saw them in
training (RGB over white, sides whole multiples of 32 under a pixel budget that shrinks with their number, re-encoded
as JPEG at quality 92) and the request in the edit's scaffold, through Qwen3.5's processor (built without its video
half, which needs torchvision). With layout boxes (FLUX.3's layout captions: layout_captions.py) the layout system
prompt of the mode ("t2i_bbox", "i2i_bbox") writes a caption that cites the boxed elements and ends with their table,
the user's boxes kept as given. The caption then replaces the prompt: it is what the picture is made from and what
the image's metadata records, so a recipe makes the same picture again without the rewriter.

The model stays loaded on the CPU between jobs and visits the job's device only while it writes: a 9B model beside
FLUX.3 would not fit most cards. Captions are kept per request, so a batch of one prompt is rewritten once.

torch and transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from desktop.engine.backends.layout_captions import layout_request, locked_rows, reconciled
from desktop.engine.errors import Cancelled, InvalidRequest, ModelError, OutOfMemory
from desktop.engine.imaging import on_white
from desktop.engine.request import LayoutBox
from desktop.engine.terminal_text import is_unsafe_char

# diffusers' and BFL's limit on the caption's length, in tokens.
MAX_NEW_TOKENS = 3584
SYSTEM_PROMPTS_FILE = "system_prompts.json"
TEXT_TO_IMAGE_MODE, EDIT_MODE = "t2i", "i2i"
LAYOUT_SUFFIX = "_bbox"  # the layout form of a mode's system prompt
# The user turn of an edit: the reference pictures first, then this text (the format the rewriter was trained on).
EDIT_SCAFFOLD = (
    "Reference images follow in order (the first image, the second image, ...).\n"
    "User request: {request}\n"
    "Output the caption."
)
# The same with layout boxes: the rewriter names the pictures ref_image_0 ... in its table.
LAYOUT_EDIT_SCAFFOLD = (
    "Reference images follow in attachment order: ref_image_0, ref_image_1, ...\n"
    "User editing instruction: {request}\n"
    "Decide the edit, imagine the target image, and output the annotation record."
)
# How the rewriter saw reference pictures in training: sides in whole multiples of 32 pixels, at most this many
# pixels for one, two, or three and more pictures; JPEG at this quality.
REFERENCE_MULTIPLE = 32
REFERENCE_BUDGETS = {1: 1024 * 1024, 2: 724 * 724, 3: 512 * 512}
REFERENCE_JPEG_QUALITY = 92
MAX_REFERENCE_ASPECT = 200
# The architectures the published rewriter is (its config.json's model_type).
_MODEL_TYPES = ("qwen3_5",)
_KEPT_CAPTIONS = 32


def canvas_line(width: int, height: int) -> str:
    """The t2i system prompt's canvas hint for a picture that is not square ("TARGET CANVAS: 16:9"); "" for a
    square one, which needs no hint."""
    if width == height:
        return ""
    common = math.gcd(width, height)
    return f"TARGET CANVAS: {width // common}:{height // common}"


def reference_size(width: int, height: int, count: int) -> tuple[int, int]:
    """The size one of `count` reference pictures of `width` x `height` is shown to the rewriter at: each side the
    nearest whole multiple of 32 (at least 32) while that fits the budget, else both scaled down to the budget's
    area and cut to whole multiples. (Scaled down, the narrow side of a picture at most 200:1 is at least 36 pixels
    under the smallest budget, so the cut never falls below 32 and never breaks the budget.)"""
    if max(width, height) > MAX_REFERENCE_ASPECT * min(width, height):
        raise InvalidRequest(f"A {width}x{height} reference picture is too narrow for the prompt rewriter (more than "
                             f"{MAX_REFERENCE_ASPECT}:1).")  # fmt: skip
    budget = REFERENCE_BUDGETS[min(count, 3)]
    step = REFERENCE_MULTIPLE
    w, h = (max(step, round(side / step) * step) for side in (width, height))
    if w * h <= budget:
        return w, h
    scale = math.sqrt(width * height / budget)
    return int(width / scale) // step * step, int(height / scale) // step * step


def prepared_reference(picture: Any, count: int) -> Any:
    """A reference picture as the rewriter saw them in training (module docstring): upright by its EXIF, RGB over
    white, resized with Lanczos, through a JPEG round trip."""
    from PIL import Image, ImageOps

    picture = on_white(ImageOps.exif_transpose(picture))
    size = reference_size(picture.width, picture.height, count)
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    encoded = io.BytesIO()
    picture.save(encoded, format="JPEG", quality=REFERENCE_JPEG_QUALITY)
    return Image.open(io.BytesIO(encoded.getvalue())).convert("RGB")


def user_turn(request: str, width: int, height: int) -> str:
    line = canvas_line(width, height)
    return f"{line}\n{request}" if line else request


def system_prompt(folder: Path, mode: str = TEXT_TO_IMAGE_MODE) -> str:
    """The folder's system prompt for `mode`, read from `system_prompts.json` (a mapping of mode to text)."""
    path = folder / SYSTEM_PROMPTS_FILE
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{folder} has no {SYSTEM_PROMPTS_FILE}: the prompt rewriter's folder holds its weights, its tokenizer "
            f"and the system prompts Black Forest Labs ship beside them (flux-3-image-klein-pup)."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path} could not be read as JSON: {error}.") from None
    text = prompts.get(mode) if isinstance(prompts, dict) else None
    if not isinstance(text, str) or not text.strip():
        layout = " (layout boxes need it)" if mode.endswith(LAYOUT_SUFFIX) else ""
        raise ModelError(f"{path} has no {mode!r} system prompt{layout} (a mapping of mode to text is expected).")
    return text


def _model_type(folder: Path) -> str:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder} has no config.json: choose the prompt rewriter's model folder.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path} could not be read as JSON: {error}.") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in _MODEL_TYPES:
        raise ModelError(
            f"{folder} holds a {kind or 'model of no stated type'}, not FLUX.3's prompt rewriter (a Qwen3.5 model, "
            "flux-3-image-klein-pup)."
        )
    return kind


def _printable(text: str) -> str:
    """The caption without control characters (line breaks and tabs kept), bidi controls or line separators: it
    becomes the prompt, which a NUL would make unreadable in the image's recipe."""
    return "".join(char for char in text if char in "\n\t" or not is_unsafe_char(char))


class PromptRewriter:
    """Loads the rewriter from its folder on first use and writes captions with it (module docstring)."""

    def __init__(self, max_new_tokens: int | None = None) -> None:
        self._max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
        self._folder: Path | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._processor: Any = None  # Qwen3.5's processor, loaded for the first edit
        self._captions: OrderedDict[tuple[str, ...], str] = OrderedDict()

    def unload(self) -> None:
        self._folder = self._model = self._tokenizer = self._processor = None

    def rewrite(
        self, folder: Path, request: str, width: int, height: int, device: str, dtype: Any,
        cancelled: Callable[[], bool] = lambda: False, references: Sequence[Any] = (),
        boxes: Sequence[LayoutBox] = (),
    ) -> str:  # fmt: skip
        """The caption for `request` at `width` x `height` (with `references`, PIL pictures: for an edit of them;
        with `boxes`: a layout caption placing their elements), written on `device` in `dtype`; raises Cancelled
        when `cancelled()` turns true while it writes, ModelError for a folder that is not the rewriter."""
        pictures = [prepared_reference(picture, len(references)) for picture in references]
        locked = locked_rows(boxes, edit=bool(pictures))
        mode = (EDIT_MODE if pictures else TEXT_TO_IMAGE_MODE) + (LAYOUT_SUFFIX if locked else "")
        asked = layout_request(request, locked) if locked else request
        if pictures:
            turn = (LAYOUT_EDIT_SCAFFOLD if locked else EDIT_SCAFFOLD).format(request=asked)
        else:
            turn = user_turn(asked, width, height)
        seen = tuple(hashlib.sha256(picture.tobytes()).hexdigest() for picture in pictures)
        key = (str(folder.resolve()), str(dtype), mode, turn, *seen)
        if key in self._captions:
            self._captions.move_to_end(key)
            return self._captions[key]
        self._load(folder, dtype)
        if pictures:
            inputs = self._edit_inputs(folder, mode, turn, pictures)
        else:
            messages = [{"role": "system", "content": system_prompt(folder, mode)}, {"role": "user", "content": turn}]
            inputs = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                enable_thinking=False,
            )  # fmt: skip
        caption = self._write(inputs, device, cancelled)
        if locked:
            caption = reconciled(caption, locked)
        self._captions[key] = caption
        while len(self._captions) > _KEPT_CAPTIONS:
            self._captions.popitem(last=False)
        return caption

    def _load(self, folder: Path, dtype: Any) -> None:
        if self._folder == folder.resolve() and self._model is not None and self._model.dtype == dtype:
            return
        import transformers

        if not folder.is_dir():
            raise ModelError(f"The prompt rewriter's folder {folder} does not exist.")
        _model_type(folder)
        system_prompt(folder)  # refused before minutes of loading, not after
        self.unload()  # the last one's memory goes before the next loads
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                str(folder), local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelError(f"The prompt rewriter in {folder} could not be loaded: {error}") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"{folder}'s tokenizer has no chat template (chat_template.jinja or tokenizer_config's).")
        self._folder, self._model, self._tokenizer = folder.resolve(), model.eval(), tokenizer

    def _edit_inputs(self, folder: Path, mode: str, turn: str, pictures: list[Any]) -> Any:
        """The edit's conversation through Qwen3.5's processor: the mode's system prompt ("i2i" or "i2i_bbox"), then
        the pictures and the scaffolded request as one user turn (content as lists of parts, as processor templates
        take them)."""
        from desktop.engine.backends import families_qwen21

        if self._processor is None:
            try:
                self._processor = families_qwen21.load_processor(folder)
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ModelError(f"The prompt rewriter's processor in {folder} could not be loaded: {error}") from None
        content = [{"type": "image", "image": picture} for picture in pictures] + [{"type": "text", "text": turn}]
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt(folder, mode)}]},
                    {"role": "user", "content": content}]  # fmt: skip
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt", enable_thinking=False)

    def _gigabytes(self) -> float:
        return sum(p.numel() * p.element_size() for p in self._model.parameters()) / 1e9

    def _write(self, inputs: Any, device: str, cancelled: Callable[[], bool]) -> str:
        import torch
        import transformers

        class _Stop(transformers.StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled(), dtype=torch.bool, device=input_ids.device)

        written = None
        try:
            model = self._model.to(device)
            with torch.inference_mode():
                written = model.generate(
                    **inputs.to(device), max_new_tokens=self._max_new_tokens, do_sample=False,
                    stopping_criteria=transformers.StoppingCriteriaList([_Stop()]),
                )  # fmt: skip
        except torch.OutOfMemoryError:
            pass  # recovered below, outside the except block, so its traceback no longer pins the tensors
        finally:
            self._model.to("cpu")  # the job's models get the device back
        if written is None:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(
                f"The prompt rewriter ran out of memory on the {device} (its {self._gigabytes():.0f} GB beside the "
                "model's): choose the Offload memory mode, which keeps the model's parts off the GPU between jobs, "
                "or turn rewriting off."
            )
        if cancelled():
            raise Cancelled("Cancelled while the prompt was being rewritten.")
        start = inputs["input_ids"].shape[1]
        caption = _printable(self._tokenizer.decode(written[0, start:], skip_special_tokens=True)).strip()
        if not caption:
            raise ModelError("The prompt rewriter wrote an empty caption; the prompt was not changed. Turn rewriting "
                             "off to run the prompt as written.")  # fmt: skip
        return caption
