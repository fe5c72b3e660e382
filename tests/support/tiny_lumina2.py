"""A tiny random Lumina Image 2.0: diffusers' Lumina2Transformer2DModel with small dimensions (its query and
key/value heads differ, as the real model's 24 and 8 do), a tiny Gemma-2 text encoder and a Gemma tokenizer
built here with the `tokenizers` package (Gemma's own cannot ship), saved as a complete diffusers folder, as
Alpha-VLLM's is. `lumina2_to_original` writes the transformer in its makers' names (ComfyUI's files): the
inverse of diffusers' single-file converter, from the same table."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

from tests.support.tiny_dit import CONFIGS, _jitter

WIDTH = 32  # the Gemma encoder's hidden size = the transformer's caption input
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def tiny_gemma_tokenizer() -> GemmaTokenizerFast:
    """Gemma's special tokens, then one token per byte-level character and "▁" (Gemma's space): no merges."""
    vocab = {token: index for index, token in enumerate(_SPECIALS)}
    for char in ["▁", *sorted(pre_tokenizers.ByteLevel.alphabet())]:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return GemmaTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_lumina2(seed: int = 0, *, layers: int = 2, refiners: int = 1) -> Lumina2Pipeline:
    """16 latent channels and an 8x autoencoder, as the real model's (Flux's VAE)."""
    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, hidden_size=64, num_layers=layers, num_refiner_layers=refiners,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(300, 512, 512),
        cap_feat_dim=WIDTH,
    )  # fmt: skip
    _jitter(transformer, seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1, latent_channels=16,
        norm_num_groups=4, sample_size=32, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    tokenizer = tiny_gemma_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        query_pre_attn_scalar=16, sliding_window=64, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip
    encoder = Gemma2Model(config).eval()
    _jitter(encoder, seed + 1)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "lumina2" / "scheduler"))
    return Lumina2Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer
    )


# diffusers' Lumina2Transformer2DModel names -> its makers' (per block and outside the blocks).
_OUTSIDE = {
    "time_caption_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_caption_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_caption_embed.caption_embedder.0": "cap_embedder.0",
    "time_caption_embed.caption_embedder.1": "cap_embedder.1",
    "norm_out.linear_1": "final_layer.adaLN_modulation.1",
    "norm_out.linear_2": "final_layer.linear",
}
_IN_BLOCK = {
    "attn.to_out.0": "attention.out", "attn.norm_q": "attention.q_norm", "attn.norm_k": "attention.k_norm",
    "feed_forward.linear_1": "feed_forward.w1", "feed_forward.linear_2": "feed_forward.w2",
    "feed_forward.linear_3": "feed_forward.w3", "norm1.linear": "adaLN_modulation.1",
    "norm1.norm": "attention_norm1", "norm1": "attention_norm1", "norm2": "attention_norm2",
    "ffn_norm1": "ffn_norm1", "ffn_norm2": "ffn_norm2",
}  # fmt: skip


def lumina2_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors in Alpha-VLLM's / ComfyUI's names: q, k and v fused into `attention.qkv`, plus
    the original's unused `norm_final` (which loaders drop)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _OUTSIDE or module == "x_embedder":
            out[f"{_OUTSIDE.get(module, module)}.{param}"] = value
            continue
        kind, index, inner = module.split(".", 2)
        if inner in ("attn.to_k", "attn.to_v"):
            continue
        if inner == "attn.to_q":
            parts = [state[f"{kind}.{index}.attn.to_{x}.{param}"] for x in "qkv"]
            out[f"{kind}.{index}.attention.qkv.{param}"] = torch.cat(parts)
            continue
        out[f"{kind}.{index}.{_IN_BLOCK[inner]}.{param}"] = value
    out["norm_final.weight"] = torch.ones(state["x_embedder.weight"].shape[0])
    return out
