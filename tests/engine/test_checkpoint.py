"""Looking inside model files: type by content, header checks, architecture detection, hashes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest

from desktop.engine.errors import ModelError
from desktop.engine.library import checkpoint
from desktop.engine.library.checkpoint import (
    ArchitectureInfo,
    autov2_hash,
    autov3_hash,
    detect_architecture,
    detect_diffusers_folder,
    detect_model,
    read_safetensors_header,
    sha256_file,
    sniff_file_type,
)

CONFIGS = Path(__file__).resolve().parents[2] / "resources" / "configs"
UNKNOWN = r"unknown architecture \(not SD 1\.x, SD 2\.x or SDXL\)"
_SIZES = {"F16": 2, "F32": 4, "BF16": 2, "I64": 8}

Shapes = Mapping[str, tuple[int, ...]]


def write_header_only(path: Path, tensors: Shapes, metadata: Mapping[str, str] | None = None) -> Path:
    """A valid safetensors file with the given F16 tensors, all zeros (sparse: big shapes cost nothing)."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in tensors.items():
        size = math.prod(shape) * _SIZES["F16"]
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to an 8-byte boundary
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def raw_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


UNET = "model.diffusion_model."


def sd2_tensors(in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    # Real SD 2 names and the shapes that matter (conv_in, attn2.to_k, encoder width); tiny elsewhere.
    return {
        UNET + "input_blocks.0.0.weight": (320, in_channels, 3, 3),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        UNET + "out.2.weight": (4, 320, 3, 3),
        "cond_stage_model.model.token_embedding.weight": (8, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.ln_final.weight": (1024,),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
    }


def sdxl_tensors(in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        UNET + "input_blocks.0.0.weight": (320, in_channels, 3, 3),
        UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
        UNET + "label_emb.0.0.weight": (1280, 2816),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 768),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
        "conditioner.embedders.1.model.token_embedding.weight": (8, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
    }


def sd1_tensors(in_channels: int = 4, context: int = 768) -> dict[str, tuple[int, ...]]:
    return {
        UNET + "input_blocks.0.0.weight": (320, in_channels, 3, 3),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
    }


def detect_file(path: Path, **kwargs: object) -> ArchitectureInfo:
    return detect_architecture(read_safetensors_header(path), name=path.name, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# sniff_file_type


def test_sniff_by_content_not_extension(tmp_path, tiny_sd15_single):
    import torch

    single, _ = tiny_sd15_single
    disguised = shutil.copy(single, tmp_path / "model.ckpt")
    assert sniff_file_type(disguised) == "safetensors"

    pickled = raw_file(tmp_path / "model.safetensors", pickle.dumps({"state_dict": {}}, protocol=4))
    assert sniff_file_type(pickled) == "pickle"
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert sniff_file_type(legacy) == "pickle"

    zipped = tmp_path / "zipped.safetensors"
    torch.save({"w": torch.zeros(2)}, zipped)  # torch's default: a zip with a pickle inside
    assert sniff_file_type(zipped) == "zip"

    assert sniff_file_type(raw_file(tmp_path / "junk.safetensors", b"hello world, not a model")) == "unknown"
    assert sniff_file_type(raw_file(tmp_path / "empty.safetensors", b"")) == "unknown"


def test_sniff_safetensors_whose_header_length_starts_with_the_pickle_byte(tmp_path):
    # A header of 0x180 bytes begins with 0x80 0x01 ...: still safetensors, not a pickle.
    header = json.dumps({"__metadata__": {"pad": "x" * 300}}).encode()
    header += b" " * (0x180 - len(header))
    path = raw_file(tmp_path / "odd.bin", struct.pack("<Q", len(header)) + header)
    assert path.read_bytes()[0] == 0x80
    assert sniff_file_type(path) == "safetensors"
    assert read_safetensors_header(path).metadata["pad"] == "x" * 300


# --------------------------------------------------------------------------------------------------
# read_safetensors_header


def test_header_of_a_real_file(tiny_sd15_single):
    from safetensors import safe_open

    single, _ = tiny_sd15_single
    header = read_safetensors_header(single)
    with safe_open(str(single), framework="pt") as f:
        names = set(f.keys())
        assert f.metadata() == dict(header.metadata)
        sample = sorted(names)[0]
        assert header.tensors[sample].shape == tuple(f.get_slice(sample).get_shape())
    assert set(header.tensors) == names
    assert header.metadata["format"] == "pt"
    (length,) = struct.unpack("<Q", single.read_bytes()[:8])
    assert header.data_offset == 8 + length
    assert header.file_size == single.stat().st_size
    info = header.tensors[UNET + "input_blocks.0.0.weight"]
    assert info.dtype == "F32" and info.shape == (32, 4, 3, 3) and info.nbytes == 32 * 4 * 9 * 4


def test_fake_header_writer_is_valid_safetensors(tmp_path):
    # The hand-made headers below must be real safetensors files, or the detection tests prove nothing.
    from safetensors import safe_open

    path = write_header_only(tmp_path / "sd2.safetensors", sd2_tensors(), {"k": "v"})
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(sd2_tensors())
        assert f.metadata() == {"k": "v"}


def test_header_is_read_without_loading_tensors(tmp_path, monkeypatch):
    path = write_header_only(tmp_path / "big.safetensors", {"a.weight": (32768, 32768)})  # 2 GiB, sparse
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    header = read_safetensors_header(path)
    assert header.tensors["a.weight"].nbytes == 2 * 32768 * 32768
    assert sum(read) <= header.data_offset + 16


def test_header_keeps_the_bytes_of_tiny_uint8_tensors_only(tmp_path):
    # FDAT stores its upsampler's settings as seven uint8 values; weights and longer tensors are not read.
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "settings.safetensors"
    save_file({"meta": torch.tensor([3, 2, 4, 16, 3, 12, 4], dtype=torch.uint8),
               "long": torch.arange(17, dtype=torch.uint8), "weight": torch.ones(2)}, str(path))  # fmt: skip
    header = read_safetensors_header(path)
    assert dict(header.small_values) == {"meta": bytes([3, 2, 4, 16, 3, 12, 4])}


def test_truncated_download_is_detected(tmp_path, tiny_sd15_single):
    single, _ = tiny_sd15_single
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(single.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"cut\.safetensors is truncated.*download it again"):
        read_safetensors_header(cut)


def test_file_cut_inside_its_header(tmp_path, tiny_sd15_single):
    single, _ = tiny_sd15_single
    cut = raw_file(tmp_path / "cut.safetensors", single.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"cut\.safetensors is truncated"):
        read_safetensors_header(cut)


def test_pickle_is_refused_with_a_reason(tmp_path):
    path = raw_file(tmp_path / "model.safetensors", pickle.dumps({"state_dict": {}}, protocol=2))
    refused = r"model\.safetensors is not a safetensors file \(it looks like a pickled"
    with pytest.raises(ModelError, match=refused):
        read_safetensors_header(path)
    with pytest.raises(ModelError, match="can run code"):
        detect_model(path)


def test_zip_checkpoint_is_refused(tmp_path):
    import torch

    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match=r"model\.ckpt is not a safetensors file.*refuses"):
        read_safetensors_header(path)


def with_length(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "only 0 bytes"),
        (b"abc", "only 3 bytes"),
        (b"garbage!" * 100, "not a safetensors file"),
        (struct.pack("<Q", 1 << 40) + b"{}", "absurd"),
        (struct.pack("<Q", 200 * 1024 * 1024) + b"{}", "absurd"),
        (with_length(b"{not json}"), "not valid JSON"),
        (with_length(b'{"\xff\xfe": 1}'), "not valid JSON"),
        (with_length(b"[]"), "no safetensors header"),
        (with_length(b'{"a": 12345678}'), "malformed"),
        (with_length(b'{"a": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}'), "malformed"),
        (with_length(b'{"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}'), "malformed"),
        (with_length(b'{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 4]}}'), "has 4 bytes"),
        (with_length(b'{"__metadata__": [1]}'), "__metadata__"),
    ],
)
def test_garbage_is_a_model_error(tmp_path, data, message):
    # Padding after the header, so the errors come from the header itself, not from a short file.
    path = raw_file(tmp_path / "bad.safetensors", data + (b"\0" * 16 if len(data) >= 8 else b""))
    with pytest.raises(ModelError, match=message) as caught:
        read_safetensors_header(path)
    assert "bad.safetensors" in str(caught.value)


def test_unreadable_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="Cannot read missing.safetensors: it does not exist"):
        read_safetensors_header(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------------
# detect_architecture


def test_detects_tiny_single_files(tiny_sd15_single, tiny_sd15_inpaint_single, tiny_sdxl_single):
    assert detect_file(tiny_sd15_single[0]) == ArchitectureInfo("sd1", False, "sd15")
    assert detect_file(tiny_sd15_inpaint_single[0]) == ArchitectureInfo("sd1", True, "sd15-inpaint")
    assert detect_file(tiny_sdxl_single[0]) == ArchitectureInfo("sdxl", False, "sdxl")


def test_detection_ignores_the_file_name(tmp_path, tiny_sdxl_single):
    misleading = shutil.copy(tiny_sdxl_single[0], tmp_path / "v1-5-pruned-emaonly-inpainting.ckpt")
    assert detect_model(misleading).config_name == "sdxl"


def test_detects_real_shaped_headers(tmp_path):
    assert detect_file(write_header_only(tmp_path / "a", sd1_tensors())).config_name == "sd15"
    assert detect_file(write_header_only(tmp_path / "b", sd1_tensors(9))).config_name == "sd15-inpaint"
    assert detect_file(write_header_only(tmp_path / "c", sdxl_tensors())).config_name == "sdxl"
    assert detect_file(write_header_only(tmp_path / "d", sdxl_tensors(9))) == ArchitectureInfo(
        "sdxl", True, "sdxl-inpaint"
    )


def test_sd2_defaults_to_768_v_unless_told(tmp_path):
    plain = write_header_only(tmp_path / "sd2.safetensors", sd2_tensors())
    assert detect_file(plain) == ArchitectureInfo("sd2", False, "sd2")
    assert detect_file(plain, v_prediction=False).config_name == "sd2-base"
    assert detect_file(plain, v_prediction=True).config_name == "sd2"

    inpaint = write_header_only(tmp_path / "sd2-inpaint.safetensors", sd2_tensors(9))
    assert detect_file(inpaint) == ArchitectureInfo("sd2", True, "sd2-inpaint")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"modelspec.architecture": "stable-diffusion-v2-512"}, "sd2-base"),
        ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "sd2"),
        ({"modelspec.prediction_type": "epsilon"}, "sd2-base"),
        ({"modelspec.prediction_type": "v"}, "sd2"),
        ({"ss_v_parameterization": "False"}, "sd2-base"),
        ({"ss_v_parameterization": "True"}, "sd2"),
        ({"unrelated": "x"}, "sd2"),
    ],
)
def test_sd2_prediction_hint_from_metadata(tmp_path, metadata, expected):
    path = write_header_only(tmp_path / "sd2.safetensors", sd2_tensors(), metadata)
    assert detect_file(path).config_name == expected


def test_explicit_hint_beats_metadata(tmp_path):
    path = write_header_only(
        tmp_path / "sd2.safetensors", sd2_tensors(), {"modelspec.architecture": "stable-diffusion-v2-512"}
    )
    assert detect_file(path, v_prediction=True).config_name == "sd2"


@pytest.mark.parametrize(
    ("tensors", "hint"),
    [
        (
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (1,),
            },
            "LoRA",
        ),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, "VAE"),
        ({"emb_params": (4, 768)}, "embedding"),
        (sd1_tensors(8), "8 input channels"),
        (
            {k: v for k, v in sd1_tensors().items() if not k.startswith("cond_stage_model")},
            "no text encoder",
        ),
        (sd1_tensors(context=1024), "does not match"),
    ],
)
def test_unknown_architectures_are_refused(tmp_path, tensors, hint):
    path = write_header_only(tmp_path / "thing.safetensors", tensors)
    with pytest.raises(ModelError, match=UNKNOWN) as caught:
        detect_file(path)
    assert str(caught.value).startswith("thing.safetensors: ")
    assert hint in str(caught.value)


# --------------------------------------------------------------------------------------------------
# detect_diffusers_folder


def test_detects_tiny_diffusers_folders(tiny_sd15_dir, tiny_sd15_inpaint_dir, tiny_sdxl_dir):
    assert detect_diffusers_folder(tiny_sd15_dir) == ArchitectureInfo("sd1", False, "sd15")
    assert detect_diffusers_folder(tiny_sd15_inpaint_dir) == ArchitectureInfo("sd1", True, "sd15-inpaint")
    assert detect_diffusers_folder(tiny_sdxl_dir) == ArchitectureInfo("sdxl", False, "sdxl")
    assert detect_model(tiny_sdxl_dir).family == "sdxl"


def test_config_single_file_folder_detects_like_the_weights(tiny_sdxl_single):
    _, config = tiny_sdxl_single
    assert detect_diffusers_folder(config).config_name == "sdxl"


@pytest.mark.parametrize("name", checkpoint.CONFIG_NAMES)
def test_shipped_configs_detect_as_themselves(name):
    folder = CONFIGS / name
    if not (folder / "model_index.json").exists():
        pytest.skip(f"resources/configs/{name} is not there yet")
    assert detect_diffusers_folder(folder).config_name == name


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        detect_diffusers_folder(tmp_path)


def _folder(root: Path, index: dict, unet: dict) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "unet" / "config.json").write_text(json.dumps(unet))
    return root


def test_folder_of_another_pipeline_is_refused(tmp_path):
    folder = _folder(tmp_path / "other", {"_class_name": "KandinskyPipeline"}, {"in_channels": 4})
    with pytest.raises(ModelError, match=UNKNOWN + ".*KandinskyPipeline"):
        detect_diffusers_folder(folder)


def test_sdxl_refiner_folder_is_detected_as_a_refiner(tmp_path):
    index = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]}
    unet = {"in_channels": 4, "addition_embed_type": "text_time", "cross_attention_dim": 1280}
    arch = detect_diffusers_folder(_folder(tmp_path / "refiner", index, unet))
    assert arch.refiner and arch.config_name == "sdxl-refiner" and arch.label == "SDXL refiner"


_REFINER_FILE = {
    UNET + "input_blocks.0.0.weight": (384, 4, 3, 3),
    UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (768, 1280),
    UNET + "label_emb.0.0.weight": (1536, 2560),
    "conditioner.embedders.0.model.text_projection": (1280, 1280),
}


def test_sdxl_refiner_file_is_detected_and_needs_its_encoder(tmp_path):
    encoder = {"conditioner.embedders.0.model." + n: (1280,) for n in
               ("transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight")}  # fmt: skip
    arch = detect_file(write_header_only(tmp_path / "refiner.safetensors", _REFINER_FILE | encoder))
    assert arch.refiner and arch.config_name == "sdxl-refiner" and arch.label == "SDXL refiner"
    with pytest.raises(ModelError, match="an SDXL refiner, but its text-encoder weights are missing"):
        detect_file(write_header_only(tmp_path / "bare.safetensors", _REFINER_FILE))


def test_sd2_folder_prediction_from_its_scheduler(tmp_path):
    folder = _folder(
        tmp_path / "sd2",
        {"_class_name": "StableDiffusionPipeline"},
        {"in_channels": 4, "cross_attention_dim": 1024},
    )
    assert detect_diffusers_folder(folder).config_name == "sd2"  # no scheduler config: assume 768-v
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    assert detect_diffusers_folder(folder).config_name == "sd2-base"


def test_broken_config_json_is_a_model_error(tmp_path):
    folder = _folder(tmp_path / "m", {"_class_name": "StableDiffusionPipeline"}, {})
    (folder / "unet" / "config.json").write_text("{oops")
    with pytest.raises(ModelError, match="not valid JSON"):
        detect_diffusers_folder(folder)


# --------------------------------------------------------------------------------------------------
# Hashes


def test_sha256_and_autov2_match_hashlib(tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 123)  # several 1 MB chunks plus a partial one
    path = raw_file(tmp_path / "model.safetensors", data)
    progress = []
    assert sha256_file(path, on_progress=lambda done, total: progress.append((done, total))) == (
        hashlib.sha256(data).hexdigest()
    )
    assert progress[-1] == (len(data), len(data)) and len(progress) == 3
    assert autov2_hash(path) == hashlib.sha256(data).hexdigest()[:10]


def test_autov3_hashes_the_data_after_the_header(tiny_sd15_single):
    single, _ = tiny_sd15_single
    data = single.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert autov3_hash(single) == hashlib.sha256(data[8 + length :]).hexdigest()[:12]


@pytest.mark.parametrize(
    ("tensors", "family"),
    [
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "Flux.1"),
        ({UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)}, "SD3"),
    ],
)
def test_incomplete_dit_files_are_refused_naming_the_file(tmp_path, tensors, family):
    path = write_header_only(tmp_path / "thing.safetensors", tensors)
    with pytest.raises(ModelError, match=rf"^thing\.safetensors looks like {family} but .* is missing"):
        detect_file(path)
