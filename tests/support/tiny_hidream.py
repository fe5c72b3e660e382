"""A tiny random HiDream-I1: diffusers' HiDreamImageTransformer2DModel with small dimensions (its double- and
single-stream blocks with their mixture of experts, a caption projection per block), its four text encoders (CLIP-L
and CLIP-G with projections, T5 and a Llama whose hidden states the blocks read layer by layer), Flux's 16-channel
VAE shape, saved as a complete diffusers folder. The Llama's tokenizer here is the shipped T5 one as a plain fast
tokenizer (Llama 3.1's own cannot ship; the pipeline needs any tokenizer with an end token)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    UniPCMultistepScheduler,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5TokenizerFast,
)

from desktop.engine.resources import Resources
from tests.support.tiny_dit import _jitter, _t5, _vae

LLAMA_WIDTH = 32
LLAMA_LAYERS = 3
# The release's schedulers (diffusers' HiDream-ai folders): Full's UniPC over flow sigmas at shift 3, Dev's and
# Fast's Euler at shift 6 and 3.
SCHEDULERS = {
    "full": lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    "dev": lambda: FlowMatchEulerDiscreteScheduler(shift=6.0),
    "fast": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}


def _clip(width: int) -> CLIPTextModelWithProjection:
    """HiDream's CLIP encoders read 128 tokens (its release's have 248 positions, not CLIP's 77)."""
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=248, projection_dim=width, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config)


def _tokenizers() -> dict:
    resources = Resources.default()
    t5 = T5TokenizerFast.from_pretrained(str(resources.tokenizers / "t5"), local_files_only=True)
    llama = PreTrainedTokenizerFast(tokenizer_object=t5.backend_tokenizer, eos_token="</s>", model_max_length=128)
    clip = str(resources.tokenizer_folder())
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(clip, local_files_only=True),
        "tokenizer_2": CLIPTokenizer.from_pretrained(clip, local_files_only=True),
        "tokenizer_3": t5,
        "tokenizer_4": llama,
    }


def build_tiny_hidream(
    seed: int = 0, *, variant: str = "full", double: int = 2, single: int = 2, llama_vocabulary: int | None = None
) -> HiDreamImagePipeline:
    """A pipeline whose reference size is 64x64 pixels (`default_sample_size`), so that bare diffusers runs a
    64x64 job at that size (its pipeline resizes every job to that area). `llama_vocabulary`: Llama 3's 128,256 for a
    Llama file the library must tell from a Mistral (the tokenizer's own size by default)."""
    torch.manual_seed(seed)
    heads, head = 2, 16
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=double, num_single_layers=single,
        attention_head_dim=head, num_attention_heads=heads, caption_channels=[32, LLAMA_WIDTH],
        text_emb_dim=32 + 48, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(8, 4, 4),
        max_resolution=(16, 16), llama_layers=[(i + 1) % LLAMA_LAYERS for i in range(double + single)],
    )  # fmt: skip
    transformer.eval()  # its training mode unpatchifies otherwise
    _jitter(transformer, seed)
    vae = _vae(16, 0.1159, 0.3611, blocks=4)  # Flux.1's VAE's shape: 16 channels, 8x
    tokenizers = _tokenizers()
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=llama_vocabulary or len(tokenizers["tokenizer_4"]), hidden_size=LLAMA_WIDTH, intermediate_size=48,
        num_hidden_layers=LLAMA_LAYERS, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
    )).eval()  # fmt: skip
    # CLIP-L and CLIP-G of other widths, as the real ones (768, 1280): a library file finds its slot by its width.
    encoders = {"text_encoder": _clip(32), "text_encoder_2": _clip(48), "text_encoder_3": _t5(),
                "text_encoder_4": llama}  # fmt: skip
    for offset, encoder in enumerate(encoders.values()):
        _jitter(encoder.eval(), seed + 1 + offset)
    pipe = HiDreamImagePipeline(
        transformer=transformer, scheduler=SCHEDULERS[variant](), vae=vae, **encoders, **tokenizers
    )
    pipe.default_sample_size = 64 // pipe.vae_scale_factor
    return pipe


def library_files(pipe: HiDreamImagePipeline, folder: Path) -> dict[str, Path]:
    """The pipeline's encoders and VAE as ComfyUI keeps them apart: each CLIP and T5 in transformers' names, Llama's
    language model under `model.` without its unused head (as `llama_3.1_8b_instruct_*.safetensors`), the VAE in
    diffusers' names."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "clip_l_hidream": pipe.text_encoder.state_dict(),
        "clip_g_hidream": pipe.text_encoder_2.state_dict(),
        "t5xxl": {key: value for key, value in pipe.text_encoder_3.state_dict().items()
                  if key != "encoder.embed_tokens.weight"},  # tied to `shared`, which files keep
        "llama_3.1_8b_instruct": {key: value for key, value in pipe.text_encoder_4.state_dict().items()
                                  if not key.startswith("lm_head.")},
        "ae": pipe.vae.state_dict(),
    }  # fmt: skip
    written = {}
    for name, state in parts.items():
        written[name] = folder / f"{name}.safetensors"
        save_file({key: value.contiguous() for key, value in state.items()}, str(written[name]))
    return written
