"""Small RGB drawings of the world's concepts: one glyph per concept, painted in the colour attribute, with
variation in position, size, shade and noise (so a vision encoder has to learn the concept, not memorise pixels).

A concept's glyph is a fixed set of 3 primitives (rectangle, ellipse, triangle, thick line) drawn from a generator
seeded by the concept's name and the world's seed: within a world the same concept always looks alike and
different concepts differ in shape; each seed draws new glyphs (a new set of drawings for every report seed).

    glyph("knife", 3)  ->  [("rect", box), ("triangle", box), ("line", box)]   boxes in [0, 1] coordinates
    render("knife", "red", rng, glyph_seed=3) -> PIL.Image 32 x 32
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw

from tga_fast.toy.world import COLOURS

SIZE = 32
PRIMITIVES = ("rect", "ellipse", "triangle", "line")


def glyph(concept: str, glyph_seed: int = 0) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The concept's 3 primitives with boxes ``(x0, y0, x1, y1)`` in unit coordinates (seed 0 keeps the glyphs of
    the first world version)."""
    name = concept if glyph_seed == 0 else f"{concept}#{glyph_seed}"
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(3):
        kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
        x0, y0 = rng.uniform(0.0, 0.55, 2)
        w, h = rng.uniform(0.25, 0.6, 2)
        parts.append((kind, (float(x0), float(y0), float(min(1.0, x0 + w)), float(min(1.0, y0 + h)))))
    return parts


def render(concept: str, colour: str, rng: np.random.Generator, size: int = SIZE, glyph_seed: int = 0) -> Image.Image:
    """One drawing of ``concept`` in ``colour``: the glyph scaled (0.7-1.0), shifted (within the margin), its
    colour shaded (+-25 per channel), on a light noisy background."""
    background = rng.integers(200, 250)
    canvas = Image.new("RGB", (size, size), (int(background),) * 3)
    draw = ImageDraw.Draw(canvas)
    scale = rng.uniform(0.7, 1.0) * (size - 4)
    free = size - 4 - scale
    ox, oy = 2 + rng.uniform(0, free, 2)
    base = np.array(COLOURS[colour])
    fill = tuple(int(v) for v in np.clip(base + rng.integers(-25, 26, 3), 0, 255))
    outline = tuple(int(v * 0.45) for v in fill)
    for kind, (x0, y0, x1, y1) in glyph(concept, glyph_seed):
        box = [ox + x0 * scale, oy + y0 * scale, ox + x1 * scale, oy + y1 * scale]
        if kind == "rect":
            draw.rectangle(box, fill=fill, outline=outline)
        elif kind == "ellipse":
            draw.ellipse(box, fill=fill, outline=outline)
        elif kind == "triangle":
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=fill, outline=outline)
        else:
            draw.line([(box[0], box[1]), (box[2], box[3])], fill=outline, width=3)
    pixels = np.asarray(canvas).astype(np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_set(combos, per_combo: int, seed: int, size: int = SIZE, glyph_seed: int = 0):
    """``per_combo`` drawings of every ``(colour, concept)``: ``(images, combos_per_image)``, deterministic in
    ``seed`` (each image has its own generator, so one split never shifts another) and ``glyph_seed``."""
    images, labels = [], []
    for i, (colour, concept) in enumerate(combos):
        for j in range(per_combo):
            rng = np.random.default_rng([seed, i, j])
            images.append(render(concept, colour, rng, size, glyph_seed))
            labels.append((colour, concept))
    return images, labels


def contact_sheet(images, columns: int = 12, scale: int = 2) -> Image.Image:
    """The images side by side (for the report)."""
    rows = (len(images) + columns - 1) // columns
    size = images[0].size[0]
    sheet = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * size, (i // columns) * size))
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
