"""fp8 safetensors transformers (float8_e4m3fn / float8_e5m2): kept stored in fp8 while loaded.

diffusers reads such a file's tensors up to the compute dtype (bf16, fp16 or fp32 -- exact, every fp8
value is one of theirs); this puts the transformer's layers back in the file's fp8 type with diffusers'
layer-wise casting, which casts each layer up to the compute dtype only while it runs. The transformer
then holds half (bf16) or a quarter (fp32) of the memory it would cast up whole, and its output is the
file's weights computed at full precision. Norms, embeddings and the input/output projections stay in
the compute dtype (diffusers' default skip list), as the fp8 files people share keep them at full
precision or lose nothing by it.

Called from families.load_transformer on the generation thread; torch is imported inside.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.dit import DitInfo


def keep_fp8(transformer: Any, info: DitInfo, compute_dtype: Any) -> Any:
    """`transformer` with its layers stored in `info`'s fp8 type when the file was fp8; else as it is."""
    import torch

    if info.fp8_storage is None:
        return transformer
    storage = getattr(torch, info.fp8_storage)
    transformer.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute_dtype)
    return transformer
