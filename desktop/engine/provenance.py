"""Provenance: every image says it was made by a trained model, and can carry a signed C2PA manifest.

Two marks, both written by the image writer (`desktop.engine.outputs`):

- XMP, always: IPTC's `DigitalSourceType` = trainedAlgorithmicMedia, in the iTXt chunk
  `XML:com.adobe.xmp` that photo tools, search engines and social sites read.
- C2PA, when the user turned it on and has a signing key: a manifest naming Marble (the claim
  generator) and the model (a `c2pa.created` action with the same digital source type, the model's
  name and hash as its parameters), signed with the user's own key. No timestamp authority: Marble
  never goes online, so the signature is only as old as the signer says.

The key is the user's, made on this machine (`create_signing_key`): a local root certificate and a
signing certificate below it, because the C2PA library refuses a self-signed end certificate. The
root's private key is thrown away once the signing certificate is made, so nothing can issue another
certificate in the user's name. Readers report such a signer as untrusted (`signingCredential.untrusted`);
everything else in the manifest validates.

The c2pa library (a 20 MB native library) is imported when the first image is signed, not at start.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from desktop.engine.errors import InvalidRequest, StorageError

XMP_KEYWORD = "XML:com.adobe.xmp"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CLAIM_GENERATOR = "Marble Studio"
KEY_FILE = "c2pa-signing-key.pem"
CHAIN_FILE = "c2pa-certificates.pem"
_VALID_YEARS = 10

_XMP_TEMPLATE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    Iptc4xmpExt:DigitalSourceType="{source_type}"
    xmp:CreatorTool="{creator}"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"""


class SigningError(InvalidRequest):
    """The image could not be signed, or the signing key could not be read: the user can fix both."""


@dataclass(frozen=True)
class ImageOrigin:
    """What made one image, as the provenance marks name it (never the prompt, never a path)."""

    app_version: str
    model_name: str = ""
    model_hash: str = ""


@dataclass(frozen=True)
class SigningKey:
    """PEM texts: the private key, and the certificate chain (signing certificate first, then root)."""

    private_key_pem: bytes
    certificates_pem: bytes


def xmp_packet(app_version: str) -> str:
    """A complete XMP packet marking the image as made by a trained algorithm (IPTC's vocabulary)."""
    creator = xml_escape(f"{CLAIM_GENERATOR} {app_version}".strip(), {'"': "&quot;"})
    return _XMP_TEMPLATE.format(source_type=TRAINED_ALGORITHMIC_MEDIA, creator=creator)


# ------------------------------------------------------------------------------------ the signing key


def key_exists(folder: Path) -> bool:
    return (folder / KEY_FILE).is_file() and (folder / CHAIN_FILE).is_file()


def create_signing_key(folder: Path, owner: str = "Marble Studio user") -> SigningKey:
    """Make a new EC P-256 key and its certificates in `folder` (the config folder); replaces an old one.

    The private key file is readable by its owner only (0600 on POSIX; Windows keeps the folder's
    permissions, which are the user's own profile)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, owner),
        ])

    def usage(**chosen: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**{**flags, **chosen})

    now = datetime.datetime.now(datetime.timezone.utc)
    # A few minutes back: a clock that differs slightly between machines must not make it "not yet valid".
    start, end = now - datetime.timedelta(minutes=10), now + datetime.timedelta(days=365 * _VALID_YEARS)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder().subject_name(name(f"{owner} root")).issuer_name(name(f"{owner} root"))
        .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    # C2PA's certificate profile: an end certificate (not a CA) with digitalSignature and one of the
    # allowed extended key usages (emailProtection is the one every validator accepts).
    signing = (
        x509.CertificateBuilder().subject_name(name(f"{owner} (Marble Studio)")).issuer_name(root.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    signing_key = SigningKey(
        private_key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
        certificates_pem=b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in (signing, root)),
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(folder / KEY_FILE, signing_key.private_key_pem, 0o600)
        _write_private(folder / CHAIN_FILE, signing_key.certificates_pem, 0o644)
    except OSError as error:
        raise StorageError(f"Could not save the signing key in {folder}: {error.strerror or error}.") from error
    return signing_key


def load_signing_key(folder: Path) -> SigningKey:
    """The key made by `create_signing_key`; SigningError with what to do when there is none."""
    try:
        return SigningKey((folder / KEY_FILE).read_bytes(), (folder / CHAIN_FILE).read_bytes())
    except FileNotFoundError as error:
        raise SigningError(
            "There is no C2PA signing key yet: create one in Edit > Settings (Create signing key), "
            "or turn C2PA signing off (--no-c2pa)."
        ) from error
    except OSError as error:
        raise SigningError(f"Cannot read the signing key in {folder}: {error.strerror or error}.") from error


def signer_for(config_folder: Path, enabled: bool) -> C2paSigner | None:
    """The signer the C2PA setting (or `--c2pa`) asks for; SigningError when on without a key."""
    return C2paSigner(load_signing_key(config_folder)) if enabled else None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, so the key is never readable by others, not even for a moment.
    tmp = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ------------------------------------------------------------------------------------------ signing


def manifest_definition(origin: ImageOrigin, title: str) -> dict[str, Any]:
    """The C2PA manifest for one image: Marble as claim generator, the model in the `created` action."""
    parameters: dict[str, str] = {}
    if origin.model_name:
        parameters["model"] = origin.model_name
    if origin.model_hash:
        parameters["model_hash"] = origin.model_hash
    created: dict[str, Any] = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": CLAIM_GENERATOR, "version": origin.app_version},
    }
    if parameters:
        created["parameters"] = parameters
    return {
        "claim_generator_info": [{"name": CLAIM_GENERATOR, "version": origin.app_version}],
        "title": title,
        "format": "image/png",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [created]}}],
    }


class C2paSigner:
    """Adds a signed C2PA manifest to encoded PNG bytes. Use on one thread at a time."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    def sign_png(self, png: bytes, origin: ImageOrigin, title: str) -> bytes:
        import c2pa  # the native library loads at the first signature, not at start

        # No thumbnail: the image is its own best thumbnail, and a JPEG copy would grow every file.
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        try:
            info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self._key.certificates_pem,
                                       self._key.private_key_pem, None)
            signed = io.BytesIO()
            with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest_definition(origin, title),
                                                                     context=context) as builder:
                builder.sign(signer, "image/png", io.BytesIO(png), signed)
        except c2pa.C2paError as error:
            raise SigningError(f"Could not sign {title} (C2PA): {error}. Check the signing key in the "
                               "settings, or turn C2PA signing off.") from error
        finally:
            context.close()
        return signed.getvalue()
