"""Scenes of the toy web world: what is drawn, how it is drawn, and how it is described.

A scene is a canvas (size, background colour and texture) with a main object and sometimes a
smaller second one. The main object's shape is the scene's class. Everything is drawn with PIL
and described by varied English templates with synonyms; :mod:`curate.toyworld.noise` spoils
scenes and captions the way the web does.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

#: The classes: the main object's shape. Zero-shot class names are exactly these strings.
CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "diamond", "ring", "hexagon",
    "semicircle", "heart", "arrow", "crescent", "house", "tree", "mushroom", "lightning bolt",
    "hourglass", "x mark", "flag", "umbrella", "cloud", "sun",
)  # fmt: skip

#: Other words for a class, used in about a quarter of the captions that name it.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("box shape",),
    "triangle": ("triangle shape",),
    "star": ("five-pointed star",),
    "cross": ("plus sign",),
    "diamond": ("rhombus",),
    "ring": ("hollow ring",),
    "hexagon": ("six-sided hexagon",),
    "semicircle": ("half circle",),
    "heart": ("love heart",),
    "arrow": ("right arrow",),
    "crescent": ("crescent moon",),
    "house": ("little house", "hut"),
    "tree": ("pine tree",),
    "mushroom": ("toadstool",),
    "lightning bolt": ("thunderbolt",),
    "hourglass": ("sand timer",),
    "x mark": ("letter x",),
    "flag": ("pennant flag",),
    "umbrella": ("open umbrella",),
    "cloud": ("fluffy cloud",),
    "sun": ("shining sun",),
}

COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 35, 40)),
    ("orange", (245, 135, 25)),
    ("yellow", (240, 210, 40)),
    ("green", (45, 165, 65)),
    ("blue", (40, 85, 215)),
    ("purple", (125, 50, 165)),
    ("pink", (240, 125, 180)),
    ("brown", (115, 70, 35)),
    ("black", (20, 20, 20)),
    ("white", (245, 245, 245)),
    ("gray", (130, 130, 130)),
    ("cyan", (45, 195, 210)),
)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "speckled")
SIZES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    # name, radius as a fraction of the shorter side, words used in captions
    ("small", 0.22, ("small", "little", "tiny")),
    ("medium", 0.30, ("medium", "medium-sized", "mid-sized")),
    ("large", 0.38, ("large", "big", "huge")),
)
NOUNS: tuple[str, ...] = ("photo", "picture", "image", "drawing", "illustration", "graphic")

#: Object-first, as alt text is: every template names the shape (the class); colour comes up in
#: about 40% of them, size in 30%, position and background in fewer. Captions that name every
#: attribute let a contrastive student separate a batch by colour alone and never learn shape.
SINGLE_TEMPLATES: tuple[str, ...] = (
    "a {noun} of a {size} {color} {shape}",
    "a {noun} of a {shape}",
    "{shape} {where}",
    "{color} {shape} icon",
    "a {shape} on a {texture} {bg} background",
    "simple {noun} of a {size} {shape}",
    "an illustration showing a {color} {shape}",
    "{shape} clip art",
    "the {shape} is {color} and {size}",
    "a {size} {shape}",
)
SECOND_TEMPLATES: tuple[str, ...] = (
    " next to a {color2} {shape2}",
    " and a small {color2} {shape2}",
    ", with a {color2} {shape2} nearby",
)
PREFIXES: tuple[str, ...] = ("", "", "", "", "stock image: ", "new listing - ", "free download: ")
SUFFIXES: tuple[str, ...] = (
    "", "", "", "", " | free vector", ", high resolution", ", minimalist art print",
    " for kids and classrooms",
)  # fmt: skip
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")  # "a orange" -> "an orange"


@dataclass(frozen=True)
class Thing:
    """One drawn object: shape, colour index, size name, centre and radius relative to the
    canvas (x, y as fractions of width, height; radius as a fraction of the shorter side)."""

    shape: str
    color: int
    size: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """A canvas and its objects; ``things[0]`` is the main object and gives the class."""

    width: int
    height: int
    bg: int
    texture: str
    things: tuple[Thing, ...]

    @property
    def label(self) -> int:
        return CLASSES.index(self.things[0].shape)


def sample_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    shape: str | None = None,
    second_prob: float = 0.3,
) -> Scene:
    """A random scene on a ``width`` x ``height`` canvas; ``shape`` fixes the class."""
    bg = int(rng.integers(len(COLORS)))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    main_shape = shape if shape is not None else CLASSES[int(rng.integers(len(CLASSES)))]
    size_index = int(rng.integers(len(SIZES)))
    things = [_thing(rng, main_shape, bg, size_index, width, height)]
    if rng.random() < second_prob:
        other = CLASSES[int(rng.integers(len(CLASSES)))]
        things.append(_thing(rng, other, bg, 0, width, height, scale=0.6 * things[0].radius))
    return Scene(width=width, height=height, bg=bg, texture=texture, things=tuple(things))


def _thing(
    rng: np.random.Generator,
    shape: str,
    bg: int,
    size_index: int,
    width: int,
    height: int,
    scale: float | None = None,
) -> Thing:
    """One object; ``scale`` (a radius) overrides the size's radius, for second objects, which
    are always smaller than the main one."""
    color = int(rng.integers(len(COLORS) - 1))
    color += color >= bg  # never the background colour
    name, rel, _ = SIZES[size_index]
    radius = (scale if scale is not None else rel) * float(rng.uniform(0.85, 1.15))
    short = min(width, height)
    margin_x = min(0.5, radius * short / width)
    margin_y = min(0.5, radius * short / height)
    x = float(rng.uniform(margin_x, 1.0 - margin_x))
    y = float(rng.uniform(margin_y, 1.0 - margin_y))
    return Thing(shape=shape, color=color, size=name, x=x, y=y, radius=radius)


def with_main(scene: Scene, **changes: object) -> Scene:
    """The scene with its main object changed (shape=..., color=...)."""
    main = replace(scene.things[0], **changes)
    return replace(scene, things=(main, *scene.things[1:]))


# --- drawing ---------------------------------------------------------------------------


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image."""
    image = Image.new("RGB", (scene.width, scene.height), COLORS[scene.bg][1])
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, scene)
    short = min(scene.width, scene.height)
    for thing in scene.things:
        cx, cy = thing.x * scene.width, thing.y * scene.height
        r = max(2.0, thing.radius * short)
        DRAWERS[thing.shape](draw, cx, cy, r, COLORS[thing.color][1])
    return image


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A slightly darker (or, for dark colours, lighter) tone for background textures."""
    if sum(rgb) > 200:
        return tuple(max(0, int(c * 0.9)) for c in rgb)  # type: ignore[return-value]
    return tuple(min(255, c + 25) for c in rgb)  # type: ignore[return-value]


def _draw_texture(draw: ImageDraw.ImageDraw, scene: Scene) -> None:
    tone = _shade(COLORS[scene.bg][1])
    w, h = scene.width, scene.height
    step = max(6, min(w, h) // 8)
    if scene.texture == "striped":
        for x in range(0, w + h, step):
            draw.line([(x, 0), (x - h, h)], fill=tone, width=max(1, step // 3))
    elif scene.texture == "dotted":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=tone)
    elif scene.texture == "checkered":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=tone)
    elif scene.texture == "speckled":
        # Positions from the canvas size only, so a texture never needs the scene's RNG.
        for i in range(w * h // 40):
            x, y = (i * 7919) % w, (i * 104729 // w) % h
            draw.point((x, y), fill=tone)


RGB = tuple[int, int, int]
Draw = ImageDraw.ImageDraw


def _poly(draw: Draw, points: list[tuple[float, float]], fill: RGB) -> None:
    draw.polygon(points, fill=fill)


def _regular(cx: float, cy: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(start + 2 * math.pi * k / n),
            cy - r * math.sin(start + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _circle(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=f)


def _square(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    s = r * 0.85
    d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=f)


def _triangle(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    _poly(d, [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], f)


def _star(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    points = []
    for k in range(10):
        a = math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.42
        points.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
    _poly(d, points, f)


def _cross(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    t = r * 0.3
    d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=f)
    d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=f)


def _diamond(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    _poly(d, [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], f)


def _ring(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=f, width=max(2, int(r * 0.3)))


def _hexagon(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    _poly(d, _regular(cx, cy, r, 6, 0.0), f)


def _semicircle(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.pieslice((cx - r, cy - r * 0.5, cx + r, cy + r * 1.5), 180, 360, fill=f)


def _heart(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    h = r * 0.5
    d.ellipse((cx - r, cy - r * 0.8, cx, cy - r * 0.8 + r), fill=f)
    d.ellipse((cx, cy - r * 0.8, cx + r, cy - r * 0.8 + r), fill=f)
    _poly(d, [(cx - r * 0.97, cy - h * 0.3), (cx + r * 0.97, cy - h * 0.3), (cx, cy + r)], f)


def _arrow(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    t = r * 0.22
    d.rectangle((cx - r, cy - t, cx + r * 0.1, cy + t), fill=f)
    _poly(d, [(cx + r * 0.1, cy - r * 0.6), (cx + r, cy), (cx + r * 0.1, cy + r * 0.6)], f)


def _crescent(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    # A disc with a disc of the background cut out is not possible without knowing the
    # background, so draw the crescent as a polygon between two arcs.
    outer = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in np.linspace(0.6, 5.68, 24)]
    inner = [
        (cx + r * 0.45 + r * 0.75 * math.cos(a), cy - r * 0.75 * math.sin(a))
        for a in np.linspace(5.2, 1.08, 20)
    ]
    _poly(d, outer + inner, f)


def _house(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.rectangle((cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r), fill=f)
    _poly(d, [(cx - r, cy - r * 0.05), (cx, cy - r), (cx + r, cy - r * 0.05)], f)


def _tree(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    _poly(d, [(cx, cy - r), (cx + r * 0.75, cy + r * 0.45), (cx - r * 0.75, cy + r * 0.45)], f)
    d.rectangle((cx - r * 0.15, cy + r * 0.45, cx + r * 0.15, cy + r), fill=f)


def _mushroom(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.pieslice((cx - r, cy - r, cx + r, cy + r * 0.6), 180, 360, fill=f)
    d.rectangle((cx - r * 0.25, cy - r * 0.2, cx + r * 0.25, cy + r), fill=f)


def _bolt(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    points = [(0.2, -1.0), (-0.55, 0.15), (-0.05, 0.15), (-0.25, 1.0), (0.55, -0.2), (0.05, -0.2)]
    _poly(d, [(cx + r * x, cy + r * y) for x, y in points], f)


def _hourglass(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    s = r * 0.75
    _poly(d, [(cx - s, cy - r), (cx + s, cy - r), (cx, cy)], f)
    _poly(d, [(cx - s, cy + r), (cx + s, cy + r), (cx, cy)], f)


def _x_mark(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    w = max(2, int(r * 0.45))
    s = r * 0.8
    d.line([(cx - s, cy - s), (cx + s, cy + s)], fill=f, width=w)
    d.line([(cx - s, cy + s), (cx + s, cy - s)], fill=f, width=w)


def _flag(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.rectangle((cx - r * 0.8, cy - r, cx - r * 0.6, cy + r), fill=f)
    _poly(d, [(cx - r * 0.6, cy - r), (cx + r, cy - r * 0.55), (cx - r * 0.6, cy - r * 0.1)], f)


def _umbrella(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    d.pieslice((cx - r, cy - r * 0.9, cx + r, cy + r * 0.9), 180, 360, fill=f)
    w = max(1, int(r * 0.12))
    d.line([(cx, cy), (cx, cy + r * 0.85)], fill=f, width=w)
    d.arc((cx - r * 0.3, cy + r * 0.6, cx, cy + r), 0, 180, fill=f, width=w)


def _cloud(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    for ox, oy, rr in ((-0.5, 0.15, 0.45), (0.0, -0.15, 0.55), (0.5, 0.15, 0.45)):
        x, y, q = cx + r * ox, cy + r * oy, r * rr
        d.ellipse((x - q, y - q, x + q, y + q), fill=f)
    d.rectangle((cx - r * 0.5, cy + r * 0.1, cx + r * 0.5, cy + r * 0.6), fill=f)


def _sun(d: Draw, cx: float, cy: float, r: float, f: RGB) -> None:
    q = r * 0.5
    d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=f)
    w = max(1, int(r * 0.12))
    for k in range(8):
        a = k * math.pi / 4
        d.line(
            [(cx + r * 0.65 * math.cos(a), cy + r * 0.65 * math.sin(a)),
             (cx + r * math.cos(a), cy + r * math.sin(a))],
            fill=f, width=w,
        )  # fmt: skip


Drawer = Callable[[Draw, float, float, float, RGB], None]

#: One drawing function per class.
DRAWERS: dict[str, Drawer] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
    "cross": _cross, "diamond": _diamond, "ring": _ring, "hexagon": _hexagon,
    "semicircle": _semicircle, "heart": _heart, "arrow": _arrow, "crescent": _crescent,
    "house": _house, "tree": _tree, "mushroom": _mushroom, "lightning bolt": _bolt,
    "hourglass": _hourglass, "x mark": _x_mark, "flag": _flag, "umbrella": _umbrella,
    "cloud": _cloud, "sun": _sun,
}  # fmt: skip
assert set(DRAWERS) == set(CLASSES) == set(SYNONYMS)


# --- captions --------------------------------------------------------------------------


def where(thing: Thing) -> str:
    """Position words: "in the top left corner", "on the right", "in the center"..."""
    col = ("left", "center", "right")[min(2, int(3 * thing.x))]
    row = ("top", "middle", "bottom")[min(2, int(3 * thing.y))]
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"in the {row} {col} corner"


def shape_word(rng: np.random.Generator, shape: str) -> str:
    """The class name, or (one time in four) one of its synonyms."""
    if rng.random() < 0.25:
        options = SYNONYMS[shape]
        return options[int(rng.integers(len(options)))]
    return shape


def describe(rng: np.random.Generator, scene: Scene, web_style: bool = True) -> str:
    """An English caption of the scene from a random template; ``web_style`` adds the
    prefixes and suffixes web captions carry."""
    main = scene.things[0]
    size_words = next(words for name, _, words in SIZES if name == main.size)
    fields = {
        "noun": NOUNS[int(rng.integers(len(NOUNS)))],
        "size": size_words[int(rng.integers(len(size_words)))],
        "color": COLORS[main.color][0],
        "shape": shape_word(rng, main.shape),
        "texture": scene.texture,
        "bg": COLORS[scene.bg][0],
        "where": where(main),
    }
    text = SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))].format(**fields)
    if len(scene.things) > 1 and rng.random() < 0.7:
        second = scene.things[1]
        text += SECOND_TEMPLATES[int(rng.integers(len(SECOND_TEMPLATES)))].format(
            color2=COLORS[second.color][0], shape2=shape_word(rng, second.shape)
        )
    if web_style:
        prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
        suffix = SUFFIXES[int(rng.integers(len(SUFFIXES)))]
        text = f"{prefix}{text}{suffix}"
    text = _ARTICLE.sub(r"\1n ", " ".join(text.split()))
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    return text
