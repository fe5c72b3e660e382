"""Memory modes for the diffusion transformers (Flux.1, SD3/SD3.5): which one to run with.

Pure policy, no torch: families.apply_memory_mode applies the mode the backend picks here. A 12B Flux
holds 24 GB of bf16 transformer weights and a 9.5 GB T5 encoder, so on most cards "everything on the
device" is out of reach and the choice is among
  full        everything on the device: fastest.
  tiled       as full, with the VAE decoding in tiles (large images).
  offload     model CPU offload: each component visits the GPU only while it runs (the transformer whole).
  fp8         the transformer's weights stored as float8 (e4m3fn), each layer cast up to bf16/fp16 as it
              runs (layer-wise casting: half the transformer's memory, output close to full precision),
              with model CPU offload on CUDA. Works on a CPU too (casting only).
  group       group offload: the transformers' blocks stream to the GPU one group at a time, the next
              one prefetched on a CUDA stream; full precision in a few GB.
  sequential  sequential CPU offload: each layer visits the GPU as it runs; least memory, slowest.
  nf4, int8   the transformer's linear layers quantised by bitsandbytes (NF4: about half a byte a weight;
              LLM.int8: one byte) as loaded, with model CPU offload on CUDA. Need the optional bitsandbytes
              package (its CPU backend runs them too, slowly).
`auto` picks the first of full, offload, fp8, nf4, group, sequential whose estimated peak fits the free
memory: full precision first, then the fp8 mode that keeps speed, nf4 where CUDA and bitsandbytes are there
(lossier than fp8, faster than streaming), then the slower streaming modes. int8 is never picked by auto:
it saves what fp8 saves, and runs slower.
"""

from __future__ import annotations

from dataclasses import dataclass

# Modes that change the loaded weights or hook them in ways diffusers does not undo in place: leaving one
# means loading the model again.
STICKY = ("fp8", "group", "sequential", "nf4", "int8")
BITSANDBYTES_MODES = ("nf4", "int8")
DIT_MODES = ("full", "tiled", "offload", "fp8", "group", "sequential", *BITSANDBYTES_MODES)
CUDA_ONLY = ("offload", "group", "sequential")
AUTO_ORDER = ("full", "offload", "fp8", "nf4", "group", "sequential")
# NF4's packed half byte a weight plus its block scales (one float per 64 weights, themselves quantised).
NF4_BYTES_PER_WEIGHT = 0.53
# Working memory of one image beside the weights: the transformer's activations and the VAE decode,
# about 2.5 KiB a pixel at 16 bits (a 1024x1024 Flux image peaks near 2.5 GiB over its weights).
ACTIVATION_BYTES_PER_PIXEL = 2560
# What the CUDA context, the allocator's fragmentation and other programs take: kept free.
RESERVE_BYTES = 512 * 2**20

DESCRIPTIONS = {
    "full": "everything on the device",
    "tiled": "VAE tiling",
    "offload": "model CPU offload",
    "fp8": "fp8 layer-wise casting",
    "group": "group offload",
    "sequential": "sequential CPU offload",
    "nf4": "nf4 weights (bitsandbytes)",
    "int8": "int8 weights (bitsandbytes)",
}


@dataclass(frozen=True)
class DitSizes:
    """What a loaded DiT pipeline weighs, in bytes at the dtype it runs in."""

    transformer: int
    transformer_blocks: int  # its double/joint plus single blocks: group offload holds about two at once
    encoders: tuple[int, ...]  # each text encoder
    vae: int
    fp8_possible: bool = True  # False for GGUF transformers (quantised already) and fp8 storage
    # bitsandbytes is installed and the transformer is not quantised already: the nf4/int8 modes can run.
    bitsandbytes_possible: bool = False
    # The file was NF4 (Forge's, dequantised at load): the nf4 mode gives its own weights back (every code
    # survives a second quantisation, the block maxima nearly), fp8 would round them again: nf4 comes first.
    nf4_file: bool = False

    @property
    def total(self) -> int:
        return self.transformer + sum(self.encoders) + self.vae


def peak_bytes(mode: str, sizes: DitSizes, pixels: int, element_bytes: int = 2) -> int:
    """The estimated peak device memory of one image of `pixels` pixels in `mode`."""
    work = pixels * ACTIVATION_BYTES_PER_PIXEL
    largest_encoder = max(sizes.encoders, default=0)
    block = sizes.transformer // max(1, sizes.transformer_blocks)
    if mode in ("full", "tiled"):
        return sizes.total + work
    if mode == "offload":
        return max(sizes.transformer, largest_encoder, sizes.vae) + work
    if mode in ("fp8", "int8"):
        # One byte a weight instead of `element_bytes`, and the others offloaded as in "offload".
        return max(sizes.transformer // max(1, element_bytes), largest_encoder, sizes.vae) + work
    if mode == "nf4":
        nf4 = int(sizes.transformer * NF4_BYTES_PER_WEIGHT) // max(1, element_bytes)
        return max(nf4, largest_encoder, sizes.vae) + work
    if mode == "group":
        # A block running and the next in flight, for the transformer and (block-wise too) the encoders.
        return 2 * max(block, largest_encoder // 24) + work
    return block + work  # sequential: one layer at a time, at most a block's worth


def choose_dit_mode(
    requested: str, device: str, free_bytes: int | None, sizes: DitSizes | None, pixels: int, element_bytes: int = 2
) -> str:
    """The mode to run with: the user's choice where the device supports it, or for `auto` the first
    mode of AUTO_ORDER whose peak fits `free_bytes` (with RESERVE_BYTES kept free). Off CUDA, or with
    nothing measured, auto is "full"; when nothing fits, "sequential", the least memory there is."""
    if requested in ("fp8", *BITSANDBYTES_MODES) and sizes is not None and not sizes.fp8_possible:
        requested = "offload"  # a GGUF or fp8 file is stored small already: casting it again would break it
    if requested != "auto":
        if requested in CUDA_ONLY and device != "cuda":
            return "full"
        return requested
    if device != "cuda" or free_bytes is None or sizes is None:
        return "full"
    budget = free_bytes - RESERVE_BYTES
    for mode in _auto_order(sizes):
        if not _possible(mode, sizes.fp8_possible, sizes.bitsandbytes_possible):
            continue
        if peak_bytes(mode, sizes, pixels, element_bytes) <= budget:
            return mode
    return "sequential"


def _auto_order(sizes: DitSizes) -> tuple[str, ...]:
    if not sizes.nf4_file:
        return AUTO_ORDER
    return tuple("nf4" if mode == "fp8" else "fp8" if mode == "nf4" else mode for mode in AUTO_ORDER)


def needs_reload(current: str, wanted: str) -> bool:
    """Whether going from `current` to `wanted` takes a fresh copy of the model (see STICKY)."""
    return current != wanted and current in STICKY


def fallback_mode(
    current: str, device: str, fp8_possible: bool = True, bitsandbytes_possible: bool = False
) -> str | None:
    """The mode to try after running out of memory in `current`: the next one of AUTO_ORDER the device
    can run ("tiled" counts as "full", "int8" as "fp8"), or None when `current` was the last there is."""
    order = AUTO_ORDER[AUTO_ORDER.index({"tiled": "full", "int8": "fp8"}.get(current, current)) + 1 :]
    for mode in order:
        # Auto picks nf4 on CUDA only (bitsandbytes' CPU kernels are slow): so does the fallback.
        on_cuda = mode not in CUDA_ONLY + BITSANDBYTES_MODES or device == "cuda"
        if not on_cuda or not _possible(mode, fp8_possible, bitsandbytes_possible):
            continue
        return mode
    return None


def _possible(mode: str, fp8_possible: bool, bitsandbytes_possible: bool) -> bool:
    if mode == "fp8":
        return fp8_possible
    if mode in BITSANDBYTES_MODES:
        return fp8_possible and bitsandbytes_possible
    return True
