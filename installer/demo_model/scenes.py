"""The demo model's world: procedural scenes of flat shapes, their pictures and their captions.

Everything is seeded: the same `random.Random` gives the same scenes, pictures and captions, so the
training set, the held-out prompts and the quality gate are reproducible. No torch here, so the
quality checker and the tests can use the vocabulary without the training stack.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 128  # pixels; the VAE's 8x factor gives 16x16 latents

# Colours far apart in RGB, so the checker can name a pixel by its nearest entry.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Position name -> centre as a fraction of the picture (x, y). Three columns and rows of a grid.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.2, 0.2),
    "top": (0.5, 0.2),
    "top right": (0.8, 0.2),
    "left": (0.2, 0.5),
    "centre": (0.5, 0.5),
    "right": (0.8, 0.5),
    "bottom left": (0.2, 0.8),
    "bottom": (0.5, 0.8),
    "bottom right": (0.8, 0.8),
}
EXTENT = {"small": 0.27, "large": 0.40}  # side of the shape's bounding box, fraction of the picture

JITTER = 0.03  # of the picture, on each centre coordinate
SIZE_JITTER = 0.1  # a shape's side varies by this share either way
_HELD_OUT_COUNT = 100
_HELD_OUT_SEED = 20261125


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[str, ...]  # one colour, or two for a split background
    split: str = ""  # "" | "vertical" (left/right halves) | "horizontal" (top/bottom halves)


# ---- sampling -------------------------------------------------------------------------------------------


def single_key(scene: Scene) -> tuple[str, str, str, str, str] | None:
    """The identity of a one-shape scene on a plain background, used to keep held-out prompts unseen."""
    if len(scene.shapes) != 1 or len(scene.background) != 1:
        return None
    shape = scene.shapes[0]
    return (shape.colour, shape.kind, shape.size, shape.position, scene.background[0])


def held_out_scenes() -> list[Scene]:
    """100 fully specified one-shape scenes that training never draws: the quality gate's prompts."""
    rng = random.Random(_HELD_OUT_SEED)
    chosen: dict[tuple, Scene] = {}
    while len(chosen) < _HELD_OUT_COUNT:
        background = rng.choice(list(COLOURS))
        colour = rng.choice([c for c in COLOURS if c != background])
        scene = Scene(
            (Shape(rng.choice(SHAPES), colour, rng.choice(SIZES), rng.choice(list(POSITIONS))),),
            (background,),
        )
        chosen.setdefault(single_key(scene), scene)
    return list(chosen.values())


HELD_OUT_KEYS = frozenset(single_key(scene) for scene in held_out_scenes())


def random_scene(rng: random.Random) -> Scene:
    """One training scene: 1-3 shapes (mostly one), plain background (mostly), never a held-out one."""
    while True:
        scene = _draw_scene(rng)
        if single_key(scene) not in HELD_OUT_KEYS:
            return scene


def _draw_scene(rng: random.Random) -> Scene:
    count = rng.choices((1, 2, 3), weights=(0.7, 0.2, 0.1))[0]
    if rng.random() < 0.12:
        background = tuple(rng.sample(list(COLOURS), 2))
        split = rng.choice(("vertical", "horizontal"))
    else:
        background, split = (rng.choice(list(COLOURS)),), ""
    free = [c for c in COLOURS if c not in background]
    positions = rng.sample(list(POSITIONS), count)
    if count > 1 and rng.random() < 0.3:  # "two green squares": same kind and colour
        kind, colour = rng.choice(SHAPES), rng.choice(free)
        sizes = [rng.choice(SIZES)] * count
        shapes = tuple(Shape(kind, colour, size, pos) for size, pos in zip(sizes, positions, strict=True))
    else:
        shapes = tuple(
            Shape(rng.choice(SHAPES), rng.choice(free), "small" if count > 2 else rng.choice(SIZES), pos)
            for pos in positions
        )
    return Scene(shapes, background, split)


# ---- pictures -------------------------------------------------------------------------------------------


def render(scene: Scene, rng: random.Random, size: int = SIZE) -> Image.Image:
    """The scene as an RGB picture; `rng` jitters centres and sizes a little."""
    image = Image.new("RGB", (size, size), COLOURS[scene.background[0]])
    draw = ImageDraw.Draw(image)
    if scene.split == "vertical":
        draw.rectangle((size // 2, 0, size, size), fill=COLOURS[scene.background[1]])
    elif scene.split == "horizontal":
        draw.rectangle((0, size // 2, size, size), fill=COLOURS[scene.background[1]])
    for shape in scene.shapes:
        fx, fy = POSITIONS[shape.position]
        cx = (fx + rng.uniform(-JITTER, JITTER)) * size
        cy = (fy + rng.uniform(-JITTER, JITTER)) * size
        half = EXTENT[shape.size] * size * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER) / 2
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image


# ---- captions -------------------------------------------------------------------------------------------

_POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "top left"),
    "top": ("at the top", "at the top centre", "top"),
    "top right": ("in the top right corner", "at the top right", "top right"),
    "left": ("on the left", "at the left", "left"),
    "centre": ("in the centre", "in the middle", "in the center", "centre"),
    "right": ("on the right", "at the right", "right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "bottom left"),
    "bottom": ("at the bottom", "at the bottom centre", "bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "bottom right"),
}
_NUMBERS = {2: "two", 3: "three"}


def caption(scene: Scene, rng: random.Random) -> str:
    """A varied English description of the scene. Rarely, size or position is left out."""
    background = _background_phrase(scene, rng)
    if len(scene.shapes) > 1 and len({(s.kind, s.colour, s.size) for s in scene.shapes}) == 1:
        shape = scene.shapes[0]
        where = " and ".join(_POSITION_PHRASES[s.position][0].removeprefix("in the ") for s in scene.shapes)
        things = f"{_NUMBERS[len(scene.shapes)]} {shape.size} {shape.colour} {shape.kind}s"
        if rng.random() < 0.5:
            things += f", {where}"
        return _join(things, background, rng)
    described = [_describe(shape, rng, alone=len(scene.shapes) == 1) for shape in scene.shapes]
    return _join(" and ".join(described), background, rng)


def prompt_for(scene: Scene) -> str:
    """The plain, complete wording used for held-out prompts."""
    shape = scene.shapes[0]
    where = _POSITION_PHRASES[shape.position][0]
    return f"a {shape.size} {shape.colour} {shape.kind} {where} on {_a(scene.background[0])} background"


def _describe(shape: Shape, rng: random.Random, alone: bool) -> str:
    words = []
    if not alone or rng.random() < 0.93:
        words.append(shape.size)
    words += [shape.colour, shape.kind]
    text = " ".join(words)
    if not alone or rng.random() < 0.93:
        text += " " + rng.choice(_POSITION_PHRASES[shape.position])
    return _a(text) if rng.random() < 0.8 else text


def _background_phrase(scene: Scene, rng: random.Random) -> str:
    if scene.split:
        first, second = scene.background
        halves = ("on the left", "on the right") if scene.split == "vertical" else ("at the top", "at the bottom")
        return rng.choice((f"{first} and {second} background", f"background {first} {halves[0]}, {second} {halves[1]}"))
    return f"{scene.background[0]} background"


def _join(things: str, background: str, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"{things} on {_a(background)}"
    if style == 1:
        return f"{things}, {background}"
    if style == 2:
        return f"{background} with {things}"
    return f"a picture of {things} on {_a(background)}"


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase
