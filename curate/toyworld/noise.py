"""How a toy-world POOL sample is made: clean, or spoiled by one kind of web noise.

Each kind is a named function in :data:`SAMPLE_KINDS` (a registry, not an if/elif chain). A
function gets the sample's own RNG and a :class:`PoolContext` (the world's seed, the sample's
index, its clean scene, the clean scene of any other index) and returns a :class:`PoolItem`:
the bytes to serve, the caption, and the ground truth.

Every sample starts from its *clean base*: the scene and caption drawn from the RNG seeded by
``(seed, split, index)``. A clean sample is exactly its base, so a mismatched caption or a
near-duplicate can borrow another index's clean base without generating it in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageEnhance

from curate.toyworld.scene import (
    CLASSES,
    COLORS,
    Scene,
    describe,
    encode_jpeg,
    render,
    sample_scene,
    with_main,
)

POOL_SPLIT = 1  # split id in the per-sample seed; see curate.toyworld.world.SPLIT_IDS

LANGUAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "de": {
        "templates": (
            "Foto: {shape} in {color}",
            "{shape} in {color} auf Hintergrund in {bg}",
            "Symbol {shape}, Farbe {color}",
            "Zeichnung mit {shape} ({color})",
            "Bild von {shape} in {color}, kostenlos herunterladen",
        ),
        "shapes": (
            "Kreis", "Quadrat", "Dreieck", "Stern", "Kreuz", "Raute", "Ring", "Sechseck",
            "Halbkreis", "Herz", "Pfeil", "Mondsichel", "Haus", "Baum", "Pilz", "Blitz",
            "Sanduhr", "X-Zeichen", "Fahne", "Regenschirm", "Wolke", "Sonne",
        ),
        "colors": (
            "rot", "orange", "gelb", "grün", "blau", "lila", "rosa", "braun", "schwarz",
            "weiß", "grau", "türkis",
        ),
    },
    "fr": {
        "templates": (
            "photo : {shape} de couleur {color}",
            "{shape} {color} sur fond {bg}",
            "icône {shape} en {color}",
            "dessin simple : {shape}, couleur {color}",
            "image de {shape} {color}, téléchargement gratuit",
        ),
        "shapes": (
            "cercle", "carré", "triangle", "étoile", "croix", "losange", "anneau", "hexagone",
            "demi-cercle", "cœur", "flèche", "croissant", "maison", "arbre", "champignon",
            "éclair", "sablier", "croix en x", "drapeau", "parapluie", "nuage", "soleil",
        ),
        "colors": (
            "rouge", "orange", "jaune", "vert", "bleu", "violet", "rose", "marron", "noir",
            "blanc", "gris", "cyan",
        ),
    },
    "es": {
        "templates": (
            "foto: {shape} de color {color}",
            "{shape} {color} sobre fondo {bg}",
            "icono de {shape} en {color}",
            "dibujo sencillo: {shape}, color {color}",
            "imagen de {shape} {color}, descarga gratis",
        ),
        "shapes": (
            "círculo", "cuadrado", "triángulo", "estrella", "cruz", "rombo", "anillo",
            "hexágono", "semicírculo", "corazón", "flecha", "luna creciente", "casa", "árbol",
            "seta", "rayo", "reloj de arena", "equis", "bandera", "paraguas", "nube", "sol",
        ),
        "colors": (
            "rojo", "naranja", "amarillo", "verde", "azul", "morado", "rosa", "marrón", "negro",
            "blanco", "gris", "cian",
        ),
    },
}  # fmt: skip
for _vocab in LANGUAGES.values():
    assert len(_vocab["shapes"]) == len(CLASSES) and len(_vocab["colors"]) == len(COLORS)

GENERIC_ALT: tuple[str, ...] = (
    "IMG_{n4}.JPG", "DSC_{n4}.jpg", "click here", "product photo", "image", "untitled",
    "photo {n3}", "Screenshot 2023-{mm}-{dd}", "thumbnail", "view larger image",
    "main product image", "download now", "banner", "buy now - best price", "stock photo",
    "{n6}.jpg", "image1", "no description available", "see more",
)  # fmt: skip

#: Bytes served as ``.jpg`` by some corrupt samples (an error page instead of an image).
HTML_PAGE = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>\n"
#: Start-of-scan marker: a JPEG cut before it has headers but no pixels.
_JPEG_SOS = b"\xff\xda"


@dataclass(frozen=True)
class SizeRanges:
    """Canvas sides, in pixels, for clean, tiny and extreme-aspect samples."""

    clean: tuple[int, int] = (64, 160)
    tiny: tuple[int, int] = (16, 40)
    extreme_short: tuple[int, int] = (48, 72)
    extreme_ratio: tuple[float, float] = (3.5, 6.0)


@dataclass(frozen=True)
class PoolContext:
    """What a sample maker may look at: the world seed, sizes, this index and its source."""

    seed: int
    index: int
    sizes: SizeRanges
    source: int | None = None  # another index (near_duplicate's original), chosen upfront
    pool_size: int = 0
    jpeg_quality: int = 90

    def base(self, index: int | None = None) -> tuple[Scene, str]:
        """The clean scene and caption of ``index`` (default: this sample)."""
        return clean_base(
            self.seed, POOL_SPLIT, self.index if index is None else index, self.sizes.clean
        )


@dataclass
class PoolItem:
    """One generated POOL sample and its ground truth."""

    data: bytes
    caption: str
    label: str  # "clean" or the noise kind
    true_class: int  # class of what is drawn (the source's class for a near-duplicate)
    width: int | None  # of the served image; None when the bytes are not an image
    height: int | None
    source: int | None = None  # the other index involved (mismatched, near_duplicate)
    detail: str = ""  # which variant: "de", "wrong shape: star", "html"...
    extra: dict[str, str] = field(default_factory=dict)


def sample_rng(seed: int, split: int, index: int, stream: int = 0) -> np.random.Generator:
    """The RNG of one sample: independent of every other sample, so generation is parallel."""
    return np.random.default_rng([seed, split, index, stream])


def canvas_size(rng: np.random.Generator, side_range: tuple[int, int]) -> tuple[int, int]:
    lo, hi = side_range
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def clean_base(
    seed: int, split: int, index: int, side_range: tuple[int, int], shape: str | None = None
) -> tuple[Scene, str]:
    """The clean scene and its caption for ``(seed, split, index)``."""
    rng = sample_rng(seed, split, index)
    width, height = canvas_size(rng, side_range)
    scene = sample_scene(rng, width, height, shape=shape)
    return scene, describe(rng, scene)


def _image_item(ctx: PoolContext, scene: Scene, caption: str, label: str, **kw: object) -> PoolItem:
    return PoolItem(
        data=encode_jpeg(render(scene), ctx.jpeg_quality),
        caption=caption,
        label=label,
        true_class=scene.label,
        width=scene.width,
        height=scene.height,
        **kw,  # type: ignore[arg-type]
    )


# --- the kinds -------------------------------------------------------------------------


def make_clean(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    scene, caption = ctx.base()
    return _image_item(ctx, scene, caption, "clean")


def make_mismatched(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """The image with the caption of another sample showing another class."""
    scene, _ = ctx.base()
    other, caption = scene, ""
    for _ in range(32):  # bounded: 21 of 22 classes differ, so this ends almost at once
        j = int(rng.integers(max(1, ctx.pool_size)))
        if j == ctx.index:
            continue
        other, caption = ctx.base(j)
        if other.label != scene.label:
            break
    return _image_item(
        ctx, scene, caption, "mismatched", source=j, detail=f"caption of a {CLASSES[other.label]}"
    )


def make_generic_alt(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """Alt text that says nothing about the image: "IMG_2041.JPG", "click here"..."""
    scene, _ = ctx.base()
    template = GENERIC_ALT[int(rng.integers(len(GENERIC_ALT)))]
    caption = template.format(
        n3=int(rng.integers(100, 1000)), n4=int(rng.integers(1000, 10000)),
        n6=int(rng.integers(100000, 1000000)), mm=f"{int(rng.integers(1, 13)):02d}",
        dd=f"{int(rng.integers(1, 29)):02d}",
    )  # fmt: skip
    return _image_item(ctx, scene, caption, "generic_alt")


def make_partly_wrong(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """A caption right about one attribute and wrong about the other: mostly the right colour
    and a wrong shape, sometimes the right shape and a wrong colour."""
    scene, _ = ctx.base()
    main = scene.things[0]
    if rng.random() < 0.7:
        shapes = [s for s in CLASSES if s != main.shape]
        wrong = shapes[int(rng.integers(len(shapes)))]
        told, detail = with_main(scene, shape=wrong), f"wrong shape: {wrong}"
    else:
        colors = [c for c in range(len(COLORS)) if c not in (main.color, scene.bg)]
        wrong_color = colors[int(rng.integers(len(colors)))]
        told = with_main(scene, color=wrong_color)
        detail = f"wrong colour: {COLORS[wrong_color][0]}"
    return _image_item(ctx, scene, describe(rng, told), "partly_wrong", detail=detail)


def make_other_language(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """A correct caption in German, French or Spanish."""
    scene, _ = ctx.base()
    code = sorted(LANGUAGES)[int(rng.integers(len(LANGUAGES)))]
    vocab = LANGUAGES[code]
    main = scene.things[0]
    template = vocab["templates"][int(rng.integers(len(vocab["templates"])))]
    caption = template.format(
        shape=vocab["shapes"][scene.label], color=vocab["colors"][main.color],
        bg=vocab["colors"][scene.bg],
    )  # fmt: skip
    if rng.random() < 0.4:
        caption = caption[0].upper() + caption[1:]
    return _image_item(ctx, scene, caption, "other_language", detail=code)


def make_near_duplicate(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """A clean sample again: slightly cropped and scaled back to its size (so size filters
    treat it like its original), brightened or darkened, re-encoded at a lower quality."""
    source = ctx.source if ctx.source is not None else ctx.index
    scene, caption = ctx.base(source)
    image = render(scene)
    dx, dy = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    image = image.crop(
        (dx, dy, scene.width - int(rng.integers(0, 4)), scene.height - int(rng.integers(0, 4)))
    ).resize((scene.width, scene.height), Image.Resampling.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.88, 1.12)))
    if rng.random() < 0.3:
        caption = caption.lower()
    return PoolItem(
        data=encode_jpeg(image, int(rng.integers(60, 86))),
        caption=caption,
        label="near_duplicate",
        true_class=scene.label,
        width=image.width,
        height=image.height,
        source=source,
    )


def make_tiny(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """The clean scene drawn on a canvas far smaller than any clean one."""
    scene, caption = ctx.base()
    width, height = canvas_size(rng, ctx.sizes.tiny)
    return _image_item(ctx, replace(scene, width=width, height=height), caption, "tiny_image")


def make_extreme_aspect(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """The clean scene on a banner-like canvas, one side 3.5 to 6 times the other."""
    scene, caption = ctx.base()
    lo, hi = ctx.sizes.extreme_short
    short = int(rng.integers(lo, hi + 1))
    long = int(round(short * float(rng.uniform(*ctx.sizes.extreme_ratio))))
    width, height = (long, short) if rng.random() < 0.5 else (short, long)
    return _image_item(ctx, replace(scene, width=width, height=height), caption, "extreme_aspect")


def make_corrupt(rng: np.random.Generator, ctx: PoolContext) -> PoolItem:
    """Bytes served as ``.jpg`` that no decoder reads: a JPEG cut before its pixel data, an
    HTML error page, or random bytes. The caption is a good one."""
    scene, caption = ctx.base()
    variant = ("truncated", "html", "garbage")[int(rng.integers(3))]
    if variant == "truncated":
        jpeg = encode_jpeg(render(scene))
        data = jpeg[: jpeg.index(_JPEG_SOS)]
    elif variant == "html":
        data = HTML_PAGE
    else:
        data = rng.integers(0, 256, size=int(rng.integers(200, 2000)), dtype=np.uint8).tobytes()
    return PoolItem(
        data=data,
        caption=caption,
        label="corrupt",
        true_class=scene.label,
        width=None,
        height=None,
        detail=variant,
    )


SampleMaker = Callable[[np.random.Generator, PoolContext], PoolItem]

#: Every kind of POOL sample: "clean" and the noise kinds.
SAMPLE_KINDS: dict[str, SampleMaker] = {
    "clean": make_clean,
    "mismatched": make_mismatched,
    "generic_alt": make_generic_alt,
    "partly_wrong": make_partly_wrong,
    "other_language": make_other_language,
    "near_duplicate": make_near_duplicate,
    "tiny_image": make_tiny,
    "extreme_aspect": make_extreme_aspect,
    "corrupt": make_corrupt,
}
NOISE_KINDS: tuple[str, ...] = tuple(k for k in SAMPLE_KINDS if k != "clean")


def make_pool_item(kind: str, ctx: PoolContext) -> PoolItem:
    """Generate one POOL sample of ``kind`` (its own RNG stream, separate from its base's)."""
    return SAMPLE_KINDS[kind](sample_rng(ctx.seed, POOL_SPLIT, ctx.index, stream=1), ctx)
