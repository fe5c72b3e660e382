"""Parameter bytes of a scaled-fp8 T5 kept in fp8 (backends/scaled_fp8_layers.py), or of a bitsandbytes one
kept packed (`--format nf4 / fp4 / int8`: backends/bnb_layers.py; the file as transformers saves it, `wo` in
float32), against the same file dequantised at load, as Marble loaded it before. A mid-size T5 (T5-XXL's shape
does not fit a quick run):

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_scaled_fp8_encoder.py [--d-model 1024] [--layers 4]
        [--format scaled-fp8]

Prints the file's size, both loads' parameter and buffer bytes and seconds in bf16 and float32, and whether
their hidden states are identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--format", choices=("scaled-fp8", "nf4", "fp4", "int8"), default="scaled-fp8")
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from desktop.engine.backends import bnb_layers, scaled_fp8_layers
    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
    from tests.engine.test_scaled_fp8 import scaled_fp8

    config = T5Config(vocab_size=32128, d_model=args.d_model, d_kv=64, d_ff=args.d_model * 11 // 4,
                      num_layers=args.layers, num_heads=args.d_model // 64, feed_forward_proj="gated-gelu")  # fmt: skip
    torch.manual_seed(0)
    state = {k: v for k, v in T5EncoderModel(config).state_dict().items() if k != "encoder.embed_tokens.weight"}
    tmp = Path(tempfile.mkdtemp())
    config.save_pretrained(tmp / "config")
    if args.format == "scaled-fp8":
        file, layers = scaled_fp8(state)[0], scaled_fp8_layers
    else:
        from tests.engine.test_bnb_encoders import bitsandbytes_file

        file, layers = bitsandbytes_file(state, args.format)[0], bnb_layers
    path = tmp / f"t5_{args.format}.safetensors"
    save_file(file, str(path))
    print(f"{args.format} file: {path.stat().st_size} bytes")
    component = Component("t5", path)
    info = inspect_component(component)
    keeper = layers.keeper
    ids = torch.randint(0, config.vocab_size, (1, 64))
    for dtype in (torch.bfloat16, torch.float32):
        layers.keeper = lambda *args: None  # type: ignore[assignment] # the load-time dequantisation
        start = time.perf_counter()
        before = load_encoder(tmp / "config", "T5EncoderModel", component, info, dtype=dtype)
        middle = time.perf_counter()
        layers.keeper = keeper  # type: ignore[assignment]
        after = load_encoder(tmp / "config", "T5EncoderModel", component, info, dtype=dtype)
        end = time.perf_counter()
        with torch.no_grad():
            same = torch.equal(before(ids).last_hidden_state, after(ids).last_hidden_state)
        print(f"{dtype}: dequantised at load {_bytes(before)} bytes in {middle - start:.2f} s, kept packed "
              f"{_bytes(after)} bytes in {end - middle:.2f} s, identical hidden states: {same}")  # fmt: skip


def _bytes(model) -> int:  # type: ignore[no-untyped-def]
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


if __name__ == "__main__":
    main()
