"""FaceID IP-Adapter units: what they read from the reference images, as diffusers' FaceID recipe feeds it.

A FaceID adapter does not read CLIP's view of the image but the identity of the face in it: the 512-wide,
L2-normed embedding of insightface's recognizer (ArcFace), of the largest detected face. FaceID Plus also
reads the CLIP encoder's penultimate hidden states of that face, aligned and cropped to 224 px by its five
landmarks (h94's and diffusers' recipe: `face_align.norm_crop(..., image_size=224)`), which its resampler
attends to (`clip_embeds` on diffusers' IPAdapterFaceIDPlusImageProjection); Plus v2 adds the identity
tokens back after the resampler (`shortcut`, scale 1 as diffusers' recipe).

diffusers takes either images for every adapter or embeddings for every adapter, so a job with a FaceID
unit hands all its units over as `ip_adapter_image_embeds`; CLIP units' are made with the pipeline's own
`encode_image`, exactly as it would make them from `ip_adapter_image`. Under classifier-free guidance the
negative half comes first: zeros for the identity, the encoder's hidden states of a black image for the
crops (what `encode_image` returns as unconditional), as in diffusers' recipe.

The face networks (detector + recognizer) are the control library's face models, run by Marble's ONNX
interpreter; the IP-Adapter code gets them only through a factory of a `FaceAnalyser` (the interface
below), so that it neither loads them when no FaceID unit runs nor depends on how they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from PIL import Image

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.lora import AdapterCatalog

FACE_CROP = 224  # the aligned face crop FaceID Plus' CLIP encoder reads (h94's and diffusers' recipe)


class FaceAnalyser(Protocol):
    """What FaceID units need from face analysis (desktop/engine/backends/face_analysis.py's FaceAnalyser)."""

    def detect(self, image: Image.Image) -> Sequence[Any]:
        """The faces in `image`, largest first."""
        ...

    def identity(self, image: Image.Image, face: Any) -> Any:
        """The (512,) float32 L2-normed identity embedding of `face`."""
        ...

    def crop(self, image: Image.Image, face: Any, size: int) -> Image.Image:
        """`face` aligned by its landmarks, `size` x `size` pixels."""
        ...


def library_face_analyser(catalog: AdapterCatalog) -> Callable[[], FaceAnalyser]:
    """The face analyser of the control library's face models (an SCRFD detector and an ArcFace recognizer,
    run by Marble's ONNX interpreter: face_models.py), built at the first FaceID job and kept while the
    library's face models stay the same; ModelError saying what to import when one is missing."""
    from desktop.engine.backends.face_models import LibraryFaceModels

    return LibraryFaceModels(catalog.folder).analyser


def largest_faces(analyser: FaceAnalyser, images: Sequence[Image.Image], names: Sequence[str]) -> list[Any]:
    """The largest face of each image; InvalidRequest naming the image that has none."""
    faces = []
    for image, name in zip(images, names, strict=True):
        found = analyser.detect(image)
        if not found:
            raise InvalidRequest(
                f"No face found in {name}: a FaceID IP-Adapter needs a reference photo with a visible face."
            )
        faces.append(found[0])
    return faces


def face_unit_embeds(
    pipe: Any,
    analyser: FaceAnalyser,
    images: Sequence[Image.Image],
    names: Sequence[str],
    adapter: tuple[str, int, bool],
    guided: bool,
) -> tuple[Any, Any]:
    """A FaceID unit's `ip_adapter_image_embeds` entry, shaped [halves, images, 1, 512], and for Plus the
    CLIP hidden states of the face crops, [halves, images, tokens, width] (None otherwise). `adapter`: its
    name, the identity width it reads and whether it is Plus; `guided`: with classifier-free guidance (the
    negative half first)."""
    import torch

    name, width, plus = adapter
    faces = largest_faces(analyser, images, names)
    identity = torch.stack([
        torch.as_tensor(analyser.identity(image, face), dtype=torch.float32).reshape(1, -1)
        for image, face in zip(images, faces, strict=True)
    ])[None]  # fmt: skip
    if identity.shape[-1] != width:
        raise ModelError(
            f"The face recognizer gives {identity.shape[-1]}-wide identity embeddings; the FaceID adapter {name!r} "
            f"reads {width}-wide ones (insightface's w600k_r50 and glintr100 give 512)."
        )
    identity = identity.to(dtype=pipe.unet.dtype)
    embeds = torch.cat([torch.zeros_like(identity), identity]) if guided else identity
    if not plus:
        return embeds, None
    crops = [analyser.crop(image, face, FACE_CROP) for image, face in zip(images, faces, strict=True)]
    return embeds, clip_unit_embeds(pipe, crops, hidden=True, guided=guided)


def clip_unit_embeds(pipe: Any, images: Any, hidden: bool, guided: bool) -> Any:
    """A CLIP unit's `ip_adapter_image_embeds` entry: what the pipeline makes from `images` (one image or a
    list) itself, by its own encoder call."""
    import torch

    device = next(pipe.image_encoder.parameters()).device
    positive, negative = pipe.encode_image(images, device, 1, hidden)
    return torch.cat([negative[None], positive[None]]) if guided else positive[None]


def set_face_crops(layer: Any, crops: Any, batch_size: int, guided: bool, v2: bool, device: Any) -> None:
    """Give a FaceID Plus projection its crops' hidden states, repeated per image of the batch the way the
    pipeline repeats the identity embeddings (negatives first), and its v2 shortcut."""
    import torch

    if guided:
        negative, positive = crops.chunk(2)
        crops = torch.cat([negative] * batch_size + [positive] * batch_size)
    else:
        crops = torch.cat([crops] * batch_size)
    layer.clip_embeds = crops.to(device=device, dtype=layer.proj_in.weight.dtype)
    layer.shortcut = v2
    layer.shortcut_scale = 1.0
