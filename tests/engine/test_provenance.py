"""Provenance: the XMP mark on every image, the C2PA manifest read back by the c2pa library's own
reader, the signing key's files, the command line's switch, and the private export that drops it all."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import c2pa
import numpy as np
import pytest
from PIL import Image

import desktop
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.events import ImageUnsaved, JobFinished, JobWarning
from desktop.engine.history import export_image
from desktop.engine.jobs import Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.provenance import (
    CHAIN_FILE,
    KEY_FILE,
    TRAINED_ALGORITHMIC_MEDIA,
    XMP_KEYWORD,
    C2paSigner,
    ImageOrigin,
    SigningError,
    SigningKey,
    create_signing_key,
    load_signing_key,
    signer_for,
)
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SETTINGS

CHUNKS = {"parameters": "a red circle\nSteps: 3, Seed: 7, Size: 64x64", "marble": '{"schema_version": 1}'}
ORIGIN = ImageOrigin("9.9.9", "tiny-sd15", "6ce0161689")
IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG, in order, checked against its CRC: (type, data)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def text_chunks(data: bytes) -> dict[str, tuple[bytes, bytes]]:
    """tEXt and iTXt chunks by keyword: (chunk type, the raw chunk data)."""
    found = {}
    for kind, body in png_chunks(data):
        if kind in (b"tEXt", b"iTXt"):
            found[body.split(b"\0", 1)[0].decode("latin-1")] = (kind, body)
    return found


def xmp_source_type(body: bytes) -> str | None:
    # iTXt: keyword\0 compression-flag compression-method language\0 translated-keyword\0 text
    keyword, rest = body.split(b"\0", 1)
    assert keyword == XMP_KEYWORD.encode() and rest[:2] == b"\0\0", "XMP must be an uncompressed iTXt"
    text = rest[2:].split(b"\0", 2)[2].decode("utf-8")
    assert text.startswith('<?xpacket begin="\ufeff"') and text.rstrip().endswith("<?xpacket end=\"r\"?>")
    root = ET.fromstring(text[text.index("<x:xmpmeta"):text.index("</x:xmpmeta>") + len("</x:xmpmeta>")])
    for description in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"):
        if f"{IPTC_EXT}DigitalSourceType" in description.attrib:
            return description.attrib[f"{IPTC_EXT}DigitalSourceType"]
    return None


def manifest_of(data: bytes) -> tuple[dict, list[dict]]:
    """The active manifest and the validation status, as the c2pa library's reader reports them."""
    with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
        active = reader.get_active_manifest()
        status = json.loads(reader.json()).get("validation_status", [])
    return active, status


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> SigningKey:
    return create_signing_key(tmp_path_factory.mktemp("config"))


def picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- XMP


def test_every_image_carries_the_xmp_mark_and_keeps_its_text_chunks_exactly(tmp_path):
    path = ImageWriter(tmp_path).save(picture(), CHUNKS, 7, ORIGIN)
    data = path.read_bytes()
    found = text_chunks(data)
    assert xmp_source_type(found[XMP_KEYWORD][1]) == TRAINED_ALGORITHMIC_MEDIA
    # A1111's chunk and ours are byte for byte what they were: plain tEXt, keyword\0text.
    assert found["parameters"] == (b"tEXt", b"parameters\0" + CHUNKS["parameters"].encode())
    assert found["marble"] == (b"tEXt", b"marble\0" + CHUNKS["marble"].encode())
    assert b"caBX" not in [kind for kind, _ in png_chunks(data)]  # no manifest unless signing is on
    with Image.open(path) as image:
        # Pillow, like other readers, finds the packet by its keyword.
        assert TRAINED_ALGORITHMIC_MEDIA.encode() in image.info["xmp"]


# ---------------------------------------------------------------------------------------------- C2PA


def test_signed_image_has_a_manifest_naming_marble_and_the_model(tmp_path, key):
    image = picture()
    path = ImageWriter(tmp_path, signer=C2paSigner(key)).save(image, CHUNKS, 7, ORIGIN)
    data = path.read_bytes()
    active, status = manifest_of(data)
    assert active["claim_generator_info"][0]["name"] == "Marble Studio"
    assert active["claim_generator_info"][0]["version"] == "9.9.9"
    assert active["title"] == path.name
    actions = [a for assertion in active["assertions"] if assertion["label"].startswith("c2pa.actions")
               for a in assertion["data"]["actions"]]
    assert [a["action"] for a in actions] == ["c2pa.created"]
    assert actions[0]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert actions[0]["softwareAgent"]["name"] == "Marble Studio"
    assert actions[0]["parameters"] == {"model": "tiny-sd15", "model_hash": "6ce0161689"}
    # Everything validates; only the signer is unknown to the reader (a key made on this machine).
    assert [entry["code"] for entry in status] == ["signingCredential.untrusted"]
    # The manifest rides beside the rest: the same pixels, the same text chunks, the XMP mark.
    kinds = [kind for kind, _ in png_chunks(data)]
    assert kinds.count(b"caBX") == 1
    found = text_chunks(data)
    assert found["parameters"][1] == b"parameters\0" + CHUNKS["parameters"].encode()
    assert xmp_source_type(found[XMP_KEYWORD][1]) == TRAINED_ALGORITHMIC_MEDIA
    with Image.open(path) as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(image))


def test_a_changed_pixel_breaks_the_signature(tmp_path, key):
    # The reader really checks the file: the same test on a tampered copy reports the hash mismatch.
    data = ImageWriter(tmp_path, signer=C2paSigner(key)).save(picture(), CHUNKS, 7, ORIGIN).read_bytes()
    chunks = png_chunks(data)
    idat = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    raw = bytearray(zlib.decompress(chunks[idat][1]))
    raw[5] ^= 0xFF
    body = zlib.compress(bytes(raw))
    rebuilt = bytearray(data[:8])
    for i, (kind, chunk) in enumerate(chunks):
        chunk = body if i == idat else chunk
        rebuilt += struct.pack(">I", len(chunk)) + kind + chunk + struct.pack(">I", zlib.crc32(kind + chunk))
    _, status = manifest_of(bytes(rebuilt))
    assert "assertion.dataHash.mismatch" in [entry["code"] for entry in status]


def test_signing_key_files_and_their_permissions(tmp_path):
    created = create_signing_key(tmp_path / "config")
    assert load_signing_key(tmp_path / "config") == created
    assert created.certificates_pem.count(b"BEGIN CERTIFICATE") == 2  # signing certificate + local root
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "config" / KEY_FILE).stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in (tmp_path / "config" / CHAIN_FILE).read_bytes()
    assert not list((tmp_path / "config").glob(".*partial"))
    assert signer_for(tmp_path / "config", enabled=False) is None
    assert isinstance(signer_for(tmp_path / "config", enabled=True), C2paSigner)


def test_signing_on_without_a_key_says_what_to_do(tmp_path):
    with pytest.raises(SigningError, match="Create signing key"):
        signer_for(tmp_path / "empty", enabled=True)


def test_a_broken_key_saves_the_image_unsigned_and_says_so(tmp_path, key):
    broken = SigningKey(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", key.certificates_pem)
    writer = ImageWriter(tmp_path, signer=C2paSigner(broken))
    path = writer.save(picture(), CHUNKS, 7, ORIGIN)
    assert b"caBX" not in [kind for kind, _ in png_chunks(path.read_bytes())]
    assert xmp_source_type(text_chunks(path.read_bytes())[XMP_KEYWORD][1]) == TRAINED_ALGORITHMIC_MEDIA
    assert len(writer.problems) == 1 and "without its C2PA signature" in writer.problems[0]


def test_c2pa_setting_is_declared_and_off_by_default():
    setting = next(s for s in SETTINGS if s.key == "c2pa")
    assert setting.kind == "boolean" and setting.default is False


def test_signing_cost_per_image(tmp_path, key):
    """Not a timed assertion: prints what signing adds to one 512x512 image (see the report)."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    plain = ImageWriter(tmp_path / "plain", dated=False)
    signed = ImageWriter(tmp_path / "signed", dated=False, signer=C2paSigner(key))
    timings = {}
    for name, writer in (("plain", plain), ("signed", signed)):
        writer.save(image, CHUNKS, 1, ORIGIN)  # warm up: the native library loads at the first signature
        started = time.perf_counter()
        for seed in range(5):
            writer.save(image, CHUNKS, seed, ORIGIN)
        timings[name] = (time.perf_counter() - started) / 5
    print(f"\nper 512x512 image: plain {timings['plain'] * 1000:.1f} ms, signed {timings['signed'] * 1000:.1f} ms")
    assert len(list((tmp_path / "signed").glob("*.png"))) == 6


# -------------------------------------------------------------------------------------------- export


def test_private_export_drops_every_chunk_but_the_pixels(tmp_path, key):
    image = picture()
    source = ImageWriter(tmp_path / "out", signer=C2paSigner(key)).save(image, CHUNKS, 7, ORIGIN)
    kept = export_image(source, tmp_path / "as-is.png")
    assert kept.read_bytes() == source.read_bytes()
    private = export_image(source, tmp_path / "private.png", strip_metadata=True)
    kinds = {kind for kind, _ in png_chunks(private.read_bytes())}
    assert kinds <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}, kinds
    with pytest.raises(c2pa.C2paError):
        manifest_of(private.read_bytes())
    with Image.open(private) as exported:
        assert np.array_equal(np.asarray(exported.convert("RGB")), np.asarray(image))


# ------------------------------------------------------------------------------------ through a job


def test_a_real_job_signs_its_image_with_the_model_it_used(tmp_path, key, tiny_sd15_dir):
    home = AppPaths.for_root(tmp_path / "home").ensure()
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))
    runner = JobRunner(backend, ImageWriter(home.outputs, signer=C2paSigner(key)), desktop.__version__)
    events: list = []
    request = GenerationRequest(prompt="a red circle", model=str(tiny_sd15_dir), steps=2, seed=5,
                                width=64, height=64, device="cpu")
    assert runner.run(Job(request), events.append) is JobState.FINISHED
    assert not [e for e in events if isinstance(e, JobWarning)]
    path = Path(next(e for e in events if isinstance(e, JobFinished)).paths[0])
    active, status = manifest_of(path.read_bytes())
    action = active["assertions"][0]["data"]["actions"][0]
    assert action["parameters"]["model"] == "tiny-sd15"
    assert action["softwareAgent"]["version"] == desktop.__version__
    assert [entry["code"] for entry in status] == ["signingCredential.untrusted"]


def test_an_image_that_could_not_be_saved_is_kept_with_its_marks(tmp_path, key, tiny_sd15_dir):
    home = AppPaths.for_root(tmp_path / "home").ensure()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the output folder should be")
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))
    runner = JobRunner(backend, ImageWriter(blocked, signer=C2paSigner(key)), desktop.__version__)
    events: list = []
    request = GenerationRequest(prompt="a red circle", model=str(tiny_sd15_dir), steps=2, seed=5,
                                width=64, height=64, device="cpu")
    assert runner.run(Job(request), events.append) is JobState.FAILED
    (unsaved,) = [e for e in events if isinstance(e, ImageUnsaved)]
    assert xmp_source_type(text_chunks(unsaved.png)[XMP_KEYWORD][1]) == TRAINED_ALGORITHMIC_MEDIA
    active, _ = manifest_of(unsaved.png)
    assert active["assertions"][0]["data"]["actions"][0]["parameters"]["model"] == "tiny-sd15"
