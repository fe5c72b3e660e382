"""Running FLUX.3 (called from families.py and families_qwen_zimage.py on the generation thread).

diffusers 0.42.1 has FLUX.3's transformer, its single-file converter and a LoRA loader, but runs the model only
through modular pipelines: no step callback (Marble's previews, progress and cancel), no offload methods, no image to
image, and a 9B prompt rewriter in their default graph. So Marble runs FLUX.3 with a pipeline of its own,
`pipeline_class()`: a DiffusionPipeline (offload, LoRAs through diffusers' Flux3LoraLoaderMixin, save and load) whose
call follows BFL's sampling recipe as diffusers' modular blocks implement it (tests/engine/test_flux3.py checks it
gives their pixels for the same seed):
- the prompt read by Qwen3-VL as one user message in its chat template, padded on the right to a whole number of
  80 tokens (the transformer attends to the padding, so the window matters), the padding's positions 1 (as in
  BFL's training environment), eight hidden layers (4, 8, ... 32) side by side: (1, tokens, 8 x width);
- noise drawn in float32 as a grid (B, 128, h/16, w/16) of the Flux.2 VAE's 2x2 patches, normalised by its
  batch-norm statistics, read as tokens in row order, positions (0, row / 2, column / 2, 0); the text's (0, 0, 0, k);
- a flow-matching Euler schedule, `linspace(1, 1/N, N)` shifted by a constant 6.93 (the shipped scheduler config's;
  no resolution-dependent mu);
- the base model with CFG above 1 against the negative prompt (blank when none is given), two passes a step
  (uncond + s (cond - uncond)), 50 steps by default; the distilled model (a flow map, library/dit_flux3.py) one pass a
  step told the timestep it jumps to (the next, 0 after the last), 16 steps, no CFG.
Reference pictures (`image=`, FLUX.3's editing) are read beside the noise through their own blocks, on position
layers -1, -2 ...; the picture is still drawn from noise. The prompt rewriter never runs: a picture follows from its
prompt and seed. Image to image and inpainting are Marble's own over this loop (`edit_class()`,
flow_edit.FlowEdit), as for Flux.2 dev, which draws through the same VAE; references go with them too.

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

from desktop.engine.backends import flux2_latents
from desktop.engine.backends.flow_edit import FlowEdit
from desktop.engine.errors import ModelError
from desktop.engine.request import GenerationRequest

BASE_STEPS, DISTILLED_STEPS = 50, 16
# The prompt window: padded to a multiple of this many tokens, at most MAX_SEQUENCE (diffusers' defaults, BFL's).
PAD_MULTIPLE = 80
MAX_SEQUENCE = 8192
# The text encoder's hidden states the transformer reads, side by side (hidden_states[0] is the embedding).
ENCODER_LAYERS = (4, 8, 12, 16, 20, 24, 28, 32)
# The picture's positions run at half a step per latent patch (the model's training).
_IMAGE_ROPE_SCALE = 0.5
_DEFAULT_GUIDANCE = 3.5  # the modular pipeline's guider's default


def text_width(transformer_config: dict[str, Any]) -> int | None:
    """The Qwen3-VL width a FLUX.3 transformer reads (its text input over the eight stacked layers)."""
    joint = transformer_config.get("joint_attention_dim")
    return joint // len(ENCODER_LAYERS) if isinstance(joint, int) and joint % len(ENCODER_LAYERS) == 0 else None


def settings(state: dict[str, Any]) -> dict[str, Any]:
    """The config values a FLUX.3 transformer's tensors (diffusers' or BFL's names) decide, overriding the shipped
    config's: widths, head size, layer counts, the flow map. The rotary axes split the head evenly, as the shipped
    (32, 32, 32, 32) does a 128-wide head."""

    def shape(*names: str) -> tuple[int, ...]:
        for key in names:
            if key in state:  # a GGUF weight's own shape, not its bytes'
                return tuple(getattr(state[key], "quant_shape", state[key].shape))
        raise KeyError(f"{names[0]} is missing")

    inner, joint = shape("context_embedder.weight", "txt_in.weight")
    channels = shape("x_embedders.image.weight", "emb_in.image.weight")[1]
    head = shape("single_transformer_blocks.0.attn.norm_q.weight", "single_blocks.0.norm.query_norm.scale")[0]
    hidden = shape("single_transformer_blocks.0.ff.linear_in.weight", "single_blocks.0.mlp_in.weight")[0]
    timestep = shape("timestep_embedder.linear_1.weight", "time_in.in_layer.weight")[1]

    def count(*prefixes: str) -> int:
        return len({key.split(".")[len(prefix.split("."))] for key in state for prefix in prefixes
                    if key.startswith(prefix + ".")})  # fmt: skip

    # The feed-forward is a SwiGLU: its input projection makes both halves.
    return {
        "in_channels": channels, "cond_in_channels": shape("x_embedders.image_cond.weight",
                                                           "emb_in.image_cond.weight")[1],
        "num_layers": count("mode_blocks.image", "content_mode_blocks.image"),
        "num_single_layers": count("single_transformer_blocks", "single_blocks"),
        "attention_head_dim": head, "num_attention_heads": inner // head, "joint_attention_dim": joint,
        "timestep_channels": timestep, "mlp_ratio": hidden / 2 / inner, "axes_dims_rope": (head // 4,) * 4,
        "flow_map": any(key.startswith(("target_timestep_embedder.", "ref_time_in.")) for key in state),
    }  # fmt: skip


def diffusers_state(state: dict[str, Any]) -> dict[str, Any]:
    """A FLUX.3 transformer in BFL's names (ComfyUI's prefix removed) -> diffusers' (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    return convert_flux3_transformer_checkpoint_to_diffusers(dict(state))


# diffusers' FLUX.3 LoRA converter's renames (lora_conversion_utils), from its names back to BFL's: the blocks and
# the layers in them that a LoRA trains.
_LORA_BLOCKS = (("mode_blocks.", "content_mode_blocks."), ("single_transformer_blocks.", "single_blocks."))
_LORA_LAYERS = ((".attn.to_q", ".q_proj"), (".attn.to_k", ".k_proj"), (".attn.to_v", ".v_proj"),
                (".attn.to_out.0", ".attn_out"), (".ff.linear_in", ".mlp_in"),
                (".ff.linear_out", ".mlp_out"))  # fmt: skip


def lora_modules(modules: Iterable[str]) -> list[str]:
    """The module names a FLUX.3 LoRA in kohya's flattened names may stand for: the transformer's own `modules`
    (diffusers' names) and each block layer's BFL name (a LoRA trained on BFL's or ComfyUI's model), which diffusers'
    FLUX.3 loader converts."""
    names = []
    for name in modules:
        names.append(name)
        bfl = next((new + name[len(old):] for old, new in _LORA_BLOCKS if name.startswith(old)), name)
        bfl = next((bfl[: -len(old)] + new for old, new in _LORA_LAYERS if bfl.endswith(old)), bfl)
        if bfl != name:
            names.append(bfl)
    return names


def check_blocks(found: dict[str, Any], shipped: dict[str, Any], *, label: str, name: str) -> None:
    """A file as wide as the shipped config's model (the released FLUX.3) with fewer blocks than it is incomplete
    (its blocks' indices still run without a gap when the last ones are lost); one of other widths is another model,
    which its own tensors describe (`settings`)."""
    if found["num_attention_heads"] * found["attention_head_dim"] != (
            shipped.get("num_attention_heads", 0) * shipped.get("attention_head_dim", 0)):  # fmt: skip
        return
    for field, kind in (("num_layers", "picture"), ("num_single_layers", "single")):
        if found[field] != shipped.get(field):
            raise ModelError(
                f"{name} has {found[field]} {kind} blocks but the {label} configuration has {shipped.get(field)}: "
                "the file is incomplete, or a variant with other dimensions (pass its diffusers config folder)."
            )


def transformer_class() -> Any:
    import diffusers

    return diffusers.Flux3Transformer2DModel


def generation_arguments(request: GenerationRequest, distilled: bool) -> dict[str, Any]:
    """The prompt whole (up to 8192 tokens); the base model's CFG above 1 against the negative prompt (blank when
    none is given); the distilled model's none."""
    arguments: dict[str, Any] = {"prompt": request.prompt, "max_sequence_length": MAX_SEQUENCE}
    if distilled:
        return arguments | {"guidance_scale": 1.0}
    return arguments | {"negative_prompt": request.negative_prompt or "", "guidance_scale": float(request.cfg_scale)}


def uses_negative(distilled: bool, guidance_scale: float) -> bool:
    return not distilled and guidance_scale > 1


@functools.cache
def pipeline_class() -> Any:
    """Marble's FLUX.3 pipeline (module docstring): diffusers' pipeline interface (`callback_on_step_end` with the
    latents, `sigmas=`, `latents=` as a grid or as tokens, `output_type="latent"` giving the tokens)."""
    import diffusers
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.loaders import Flux3LoraLoaderMixin
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    class Flux3Pipeline(diffusers.DiffusionPipeline, Flux3LoraLoaderMixin):
        model_cpu_offload_seq = "text_encoder->transformer->vae"
        _callback_tensor_inputs = ["latents"]

        def __init__(self, scheduler: Any, vae: Any, text_encoder: Any, tokenizer: Any, transformer: Any) -> None:
            super().__init__()
            self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                  transformer=transformer)  # fmt: skip
            levels = len(vae.config.block_out_channels) if vae is not None else 4
            self.vae_scale_factor = 2 ** (levels - 1)
            self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)

        @property
        def distilled(self) -> bool:
            return bool(self.transformer.config.flow_map)

        def encode_prompt(self, prompt: str, device: Any = None, max_sequence_length: int = MAX_SEQUENCE) -> Any:
            """(1, tokens, 8 x width): the prompt as the transformer reads it (module docstring). `tokenizer` is
            Qwen3-VL's processor or its bare tokenizer (each has the chat template)."""
            encoder = self.text_encoder
            device = device or self._execution_device
            words = getattr(self.tokenizer, "tokenizer", self.tokenizer)
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)  # fmt: skip
            length = len(words(text, truncation=True, max_length=max_sequence_length)["input_ids"])
            window = min(math.ceil(length / PAD_MULTIPLE) * PAD_MULTIPLE, max_sequence_length)
            tokens = words(text, return_tensors="pt", padding="max_length", padding_side="right", truncation=True,
                           max_length=window)  # fmt: skip
            ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
            positions = torch.arange(window, device=device)[None].masked_fill(mask == 0, 1)
            output = encoder(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                             use_cache=False)  # fmt: skip
            stacked = torch.stack([output.hidden_states[k] for k in ENCODER_LAYERS], dim=1).to(encoder.dtype)
            batch, layers, count, width = stacked.shape
            return stacked.permute(0, 2, 1, 3).reshape(batch, count, layers * width).to(device)

        # Flux.2's 2x2 patches as channels and back (the same VAE; flux2_latents.py and the previews use them).
        _patchify_latents = staticmethod(diffusers.Flux2Pipeline._patchify_latents)
        _unpatchify_latents = staticmethod(diffusers.Flux2Pipeline._unpatchify_latents)

        def _encoded_patches(self, pixels: Any) -> Any:
            """Pictures (B, 3, H, W) in [-1, 1] -> the VAE's mode as the loop's latents: normalised 2x2 patches."""
            encoded = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mode()
            return flux2_latents.normalised_patches(self, encoded, self.vae.config.batch_norm_eps)

        @staticmethod
        def _text_ids(count: int) -> Any:
            ids = torch.zeros(count, 4)
            ids[:, 3] = torch.arange(count)
            return ids

        @staticmethod
        def _image_ids(rows: int, cols: int, layer: int = 0) -> Any:
            """(t, row, column, layer) of each latent patch: the picture drawn on layer 0, references on -1, -2..."""
            row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            ids = torch.zeros(rows * cols, 4)
            ids[:, 1], ids[:, 2] = row.flatten() * _IMAGE_ROPE_SCALE, col.flatten() * _IMAGE_ROPE_SCALE
            ids[:, 3] = layer
            return ids

        def _references(self, pictures: list[Any], batch: int, device: Any, dtype: Any) -> dict[str, Any]:
            """The reference pictures as the transformer reads them beside the noise (their own mode's blocks, at
            t = 0, in both CFG passes): sized as diffusers' FLUX.3 image processor sizes them (one kept whole under
            4 megapixels and reflect-padded to whole patches; several each under 1 megapixel, centre-cropped),
            encoded as the VAE's normalised patches, each on its own layer of positions."""
            from diffusers.modular_pipelines.flux3.image_processor import Flux3ImageProcessor

            processor = Flux3ImageProcessor(vae_scale_factor=self.vae_scale_factor * 2,
                                            vae_latent_channels=self.vae.config.latent_channels)  # fmt: skip
            mode = "fill" if len(pictures) == 1 else "crop"
            tokens, ids = [], []
            for index, picture in enumerate(pictures):
                pixels, _crop = processor.preprocess(picture.convert("RGB"), resize_mode=mode)
                grid = self._encoded_patches(pixels)
                tokens.append(grid.flatten(2).transpose(1, 2))
                ids.append(self._image_ids(*grid.shape[-2:], layer=-(1 + index)))
            hidden = torch.cat(tokens, dim=1).to(device, dtype).repeat(batch, 1, 1)
            return {"image_cond_hidden_states": hidden, "image_cond_ids": torch.cat(ids).to(device)}

        def _grid(self, width: int, height: int) -> tuple[int, int]:
            side = self.vae_scale_factor * 2
            if width % side or height % side:
                raise ValueError(f"FLUX.3 draws sides of whole {side} pixels, not {width}x{height}.")
            return height // side, width // side

        def _predict(self, latents: Any, timestep: Any, target: Any, text: Any, positions: dict[str, Any],
                     attention_kwargs: Any) -> Any:  # fmt: skip
            extra = {"target_timestep": target} if target is not None else {}
            return self.transformer(hidden_states=latents, encoder_hidden_states=text, timestep=timestep,
                                    txt_ids=self._text_ids(text.shape[1]).to(latents.device), **positions, **extra,
                                    attention_kwargs=attention_kwargs, return_dict=False)[0]  # fmt: skip

        @torch.no_grad()
        def __call__(
            self, prompt: str, negative_prompt: str | None = None, guidance_scale: float = _DEFAULT_GUIDANCE,
            num_inference_steps: int | None = None, width: int = 1024, height: int = 1024, sigmas: Any = None,
            latents: Any = None, generator: Any = None, num_images_per_prompt: int = 1, output_type: str = "pil",
            max_sequence_length: int = MAX_SEQUENCE, callback_on_step_end: Any = None,
            callback_on_step_end_tensor_inputs: Any = None, attention_kwargs: Any = None, return_dict: bool = True,
            image: list[Any] | None = None,
        ) -> Any:  # fmt: skip
            device, dtype = self._execution_device, self.transformer.dtype
            rows, cols = self._grid(width, height)
            steps = num_inference_steps or (DISTILLED_STEPS if self.distilled else BASE_STEPS)
            text = self.encode_prompt(prompt, device, max_sequence_length)
            guided = uses_negative(self.distilled, guidance_scale)
            negative = self.encode_prompt(negative_prompt or "", device, max_sequence_length) if guided else None
            if latents is None:
                batch = len(generator) if isinstance(generator, list) else num_images_per_prompt
                shape = (batch, self.transformer.config.in_channels, rows, cols)
                # Drawn in float32, then cast: the same values for a seed whatever the model's dtype.
                latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
            if latents.ndim == 4:
                latents = latents.flatten(2).transpose(1, 2)
            latents = latents.to(device, dtype)
            batch = latents.shape[0]
            text = text.to(dtype).repeat(batch, 1, 1)
            negative = negative.to(dtype).repeat(batch, 1, 1) if negative is not None else None
            positions = {"img_ids": self._image_ids(rows, cols).to(device)}
            if image:  # reference pictures (FLUX.3's editing): read beside the noise, not drawn from
                positions |= self._references(list(image), batch, device, dtype)
            schedule = sigmas if sigmas is not None else torch.linspace(1.0, 1 / steps, steps).tolist()
            self.scheduler.set_timesteps(sigmas=list(schedule), device=device)
            self.scheduler.set_begin_index(0)
            timesteps = self.scheduler.timesteps
            self._num_timesteps = len(timesteps)
            for i, t in enumerate(timesteps):
                timestep = (t / 1000).expand(batch).to(dtype)
                target = None
                if self.distilled:
                    after = timesteps[i + 1] if i + 1 < len(timesteps) else torch.zeros_like(t)
                    target = (after / 1000).expand(batch).to(dtype)
                velocity = self._predict(latents, timestep, target, text, positions, attention_kwargs)
                if negative is not None:
                    unguided = self._predict(latents, timestep, target, negative, positions, attention_kwargs)
                    velocity = unguided + guidance_scale * (velocity - unguided)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    changed = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = changed.get("latents", latents)
            if output_type == "latent":
                images = latents
            else:
                grid = latents.transpose(1, 2).reshape(batch, latents.shape[2], rows, cols)
                vae_latents = flux2_latents.vae_latents(self, grid, self.vae.config.batch_norm_eps)
                pixels = self.vae.decode(vae_latents.to(self.vae.dtype), return_dict=False)[0]
                images = self.image_processor.postprocess(pixels, output_type=output_type)
            self.maybe_free_model_hooks()
            return ImagePipelineOutput(images=images) if return_dict else (images,)

    return Flux3Pipeline


@functools.cache
def edit_class() -> Any:
    """FLUX.3 with image to image and inpainting (flow_edit.FlowEdit): the source's latents are the VAE's mode in
    2x2 patches normalised by its batch-norm statistics (the latents the loop holds), noised to where the tail of the
    job's schedule starts; the constant shift needs no mu."""
    import numpy as np

    class Flux3EditPipeline(FlowEdit, pipeline_class()):
        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            return self._grid(width, height)

        def _edit_raw_sigmas(self, steps: int) -> Any:
            return np.linspace(1.0, 1 / steps, steps)  # the pipeline's own

        def _edit_mu(self, rows: int, cols: int) -> None:
            return None

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            return self._encoded_patches(pixels)

        def _edit_pack(self, grid: Any) -> Any:
            return grid.flatten(2).transpose(1, 2)

        def _edit_conditions(self, references: Any) -> dict[str, Any]:
            return {"image": list(references)} if references else {}

    return Flux3EditPipeline
