"""A procedural toy pedestrian world: a real Re-ID task that needs no download.

Identities carry persistent, nameable attributes (clothing colours and patterns, bag, hair, body); cameras
carry their own background, illumination, colour cast, blur, resolution, viewpoint habits, framing and
occluders; some cameras may render thermal-like infrared. ``render_world`` writes a Market-1501 (or SYSU-MM01)
folder plus the ground-truth attribute table. Every image is a pure function of (seed, pid, camera, frame).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import Field, model_validator

from diffreid.config import ConfigError, StageConfig

# ----------------------------------------------------------------------------------------------------------
# 1. Vocabulary
# ----------------------------------------------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 32, 36), "blue": (36, 72, 190), "yellow": (232, 204, 44), "white": (232, 232, 226),
    "black": (28, 28, 32), "green": (42, 148, 62), "purple": (122, 52, 160), "gray": (128, 128, 128),
    "orange": (238, 128, 32), "pink": (238, 150, 190), "cyan": (62, 198, 210), "brown": (118, 76, 42),
}
# Real crowds wear mostly dark and neutral clothes: skewed weights make many identities share colours.
UPPER_COLOUR_WEIGHTS = {"black": .22, "gray": .14, "white": .13, "blue": .16, "red": .05, "green": .04,
                        "brown": .05, "purple": .04, "yellow": .04, "orange": .04, "pink": .04, "cyan": .05}
LOWER_COLOUR_WEIGHTS = {"black": .3, "blue": .26, "gray": .16, "brown": .08, "white": .04, "red": .02,
                        "green": .02, "purple": .02, "yellow": .02, "orange": .02, "pink": .03, "cyan": .03}
SHOES_COLOUR_WEIGHTS = {"black": .34, "white": .28, "gray": .1, "brown": .12, "red": .04, "blue": .05,
                        "green": .01, "purple": .01, "yellow": .01, "orange": .01, "pink": .02, "cyan": .01}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (24, 20, 18), "brown": (96, 58, 30), "blonde": (214, 180, 104), "gray": (150, 150, 146),
    "red": (160, 62, 30)}
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "light": (238, 200, 170), "medium": (212, 160, 118), "tan": (172, 118, 78), "dark": (104, 68, 44)}
VIEWS = ("front", "back", "side")
# Near-infrared reflectance of each dye (0-100), as an IR camera sees clothes: unrelated to the colour's
# visible brightness (many dark synthetic dyes reflect NIR strongly), so a cross-modality model has to learn it.
IR_REFLECTANCE: dict[str, int] = {"black": 55, "gray": 20, "white": 95, "blue": 75, "red": 10, "green": 45,
                                  "brown": 85, "purple": 30, "yellow": 65, "orange": 0, "pink": 40, "cyan": 100}
HAIR_IR: dict[str, int] = {"black": 0, "brown": 12, "blonde": 30, "gray": 40, "red": 20}

ATTRIBUTE_VOCAB: dict[str, list[str]] = {
    "upper_colour": list(COLOURS),
    "upper_pattern": ["plain", "striped", "checked", "logo"],
    "pattern_colour": list(COLOURS),
    "sleeve": ["long", "short"],
    "lower_colour": list(COLOURS),
    "lower_type": ["trousers", "shorts", "skirt"],
    "shoes_colour": list(COLOURS),
    "bag_type": ["none", "backpack", "handbag", "shoulder bag"],
    "bag_colour": list(COLOURS),
    "hair_colour": list(HAIR_COLOURS),
    "hair_length": ["short", "long"],
    "skin_tone": list(SKIN_TONES),
}
_WEIGHTS = {
    "upper_pattern": [.6, .16, .12, .12], "sleeve": [.6, .4], "lower_type": [.66, .2, .14],
    "bag_type": [.5, .2, .13, .17], "hair_colour": [.38, .3, .14, .1, .08], "hair_length": [.65, .35],
    "skin_tone": [.3, .3, .22, .18],
}


# ----------------------------------------------------------------------------------------------------------
# 2. Identities and captions
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Everything that stays the same about one person across cameras and frames."""

    pid: int
    upper_colour: str
    upper_pattern: str
    pattern_colour: str
    sleeve: str
    lower_colour: str
    lower_type: str
    shoes_colour: str
    bag_type: str
    bag_colour: str
    hair_colour: str
    hair_length: str
    skin_tone: str
    body_height: float  # relative stature, 1.0 = tallest
    body_width: float  # relative girth, 1.0 = average
    bag_side: int  # -1 = carried on the person's right, +1 = left
    shade: tuple[int, int, int] = (0, 0, 0)  # small persistent RGB offset of this person's clothes
    warmth: float = 0.0  # infrared: how warm this person's clothes read (thickness/material, not colour)

    def to_row(self) -> dict:
        row = asdict(self)
        row["shade"] = list(self.shade)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Identity":
        names = cls.__dataclass_fields__
        data = {k: v for k, v in row.items() if k in names}
        data["shade"] = tuple(int(x) for x in data.get("shade", (0, 0, 0)))
        return cls(**data)


def _choice(rng: np.random.Generator, options: Sequence[str], weights: Sequence[float] | None = None) -> str:
    p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    return str(options[int(rng.choice(len(options), p=p))])


def sample_identity(rng: np.random.Generator, pid: int = 0, uniform_colours: bool = False) -> Identity:
    """Draw one person; colours follow crowd-like skewed frequencies so identities often share them
    (``uniform_colours``: every clothing colour equally often, as a web-scale image collection would show)."""
    v, w = ATTRIBUTE_VOCAB, _WEIGHTS

    def colour(weights: dict[str, float]) -> str:
        return _choice(rng, list(weights), None if uniform_colours else list(weights.values()))

    upper = colour(UPPER_COLOUR_WEIGHTS)
    pattern_colour = _choice(rng, [c for c in v["pattern_colour"] if c != upper])
    bag_type = _choice(rng, v["bag_type"], w["bag_type"])
    return Identity(
        pid=pid,
        upper_colour=upper,
        upper_pattern=_choice(rng, v["upper_pattern"], w["upper_pattern"]),
        pattern_colour=pattern_colour,
        sleeve=_choice(rng, v["sleeve"], w["sleeve"]),
        lower_colour=colour(LOWER_COLOUR_WEIGHTS),
        lower_type=_choice(rng, v["lower_type"], w["lower_type"]),
        shoes_colour=colour(SHOES_COLOUR_WEIGHTS),
        bag_type=bag_type,
        bag_colour=_choice(rng, v["bag_colour"]) if bag_type != "none" else "none",
        hair_colour=_choice(rng, v["hair_colour"], w["hair_colour"]),
        hair_length=_choice(rng, v["hair_length"], w["hair_length"]),
        skin_tone=_choice(rng, v["skin_tone"], w["skin_tone"]),
        body_height=round(float(rng.uniform(0.86, 1.0)), 3),
        body_width=round(float(rng.uniform(0.82, 1.18)), 3),
        bag_side=int(rng.choice([-1, 1])),
        shade=tuple(int(x) for x in rng.integers(-14, 15, size=3)),
        warmth=round(float(rng.uniform(-1.0, 1.0)), 3),
    )


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(identity: Identity, view: str | None = None) -> str:
    """An English caption in the BLIP-2 style. With a ``view``, only what that view shows is named
    (a logo only from the front, a backpack not from the front) and the view is appended."""
    if view is not None and view not in VIEWS:
        raise ValueError(f"view {view!r}: expected one of {VIEWS}")
    i = identity
    garment = "shirt" if i.sleeve == "long" else "t-shirt"
    upper = _a(f"{i.upper_colour} {garment}")
    if i.upper_pattern in ("striped", "checked"):
        upper = _a(f"{i.upper_colour} {i.upper_pattern} {garment}")
    elif i.upper_pattern == "logo" and view in (None, "front"):
        upper += " with a logo"
    lower = {"trousers": f"{i.lower_colour} trousers", "shorts": f"{i.lower_colour} shorts",
             "skirt": _a(f"{i.lower_colour} skirt")}[i.lower_type]
    text = (f"a person with {i.hair_length} {i.hair_colour} hair wearing {upper} and {lower} "
            f"and {i.shoes_colour} shoes")
    if i.bag_type != "none" and not (i.bag_type == "backpack" and view == "front"):
        text += f", carrying {_a(f'{i.bag_colour} {i.bag_type}')}"
    if view is not None:
        text += f", seen from the {view}"
    return text


# ----------------------------------------------------------------------------------------------------------
# 3. Cameras
# ----------------------------------------------------------------------------------------------------------
BG_STYLES = ("tiles", "stripes", "bricks", "gradient", "plain")


@dataclass(frozen=True)
class Camera:
    """One camera's look. ``index`` is global (it seeds the look), so worlds can share or avoid cameras."""

    index: int
    bg_colour: tuple[int, int, int]
    bg_accent: tuple[int, int, int]
    bg_style: str
    floor_colour: tuple[int, int, int]
    horizon: float  # fraction of the height where the floor starts
    gain: float
    cast: tuple[float, float, float]
    blur: float  # Gaussian radius at 64 px height
    noise: float  # pixel noise sigma
    lowres: float  # >1: the camera sees the person at 1/lowres resolution
    view_probs: tuple[float, float, float]  # front, back, side
    scale: float  # person height / crop height
    jitter: float  # per-image framing jitter strength
    occlusion: float  # probability of an occluder
    ir_level: int  # infrared: background temperature
    ir_person: int  # infrared: person contrast offset of this sensor


def make_camera(index: int, seed: int = 0, nuisance: float = 1.0) -> Camera:
    """The camera with global ``index`` in the world ``seed``; ``nuisance`` scales how far cameras drift
    from a neutral one (0 = identical clean cameras)."""
    rng = np.random.default_rng([seed, 7919, index])
    s = float(nuisance)
    def muted(rgb):  # real scenes are far less saturated than clothes
        return np.clip(0.55 * rgb + 0.45 * rgb.mean(), 0, 255)
    base = muted(rng.integers(40, 215, size=3))
    accent = muted(np.clip(base + rng.integers(-70, 71, size=3), 0, 255))
    floor = muted(rng.integers(50, 190, size=3))
    views = rng.dirichlet([1.2, 1.2, 1.2])
    views = (1 - min(s, 1.0)) / 3 + min(s, 1.0) * views
    return Camera(
        index=index,
        bg_colour=tuple(int(x) for x in base),
        bg_accent=tuple(int(x) for x in accent),
        bg_style=BG_STYLES[int(rng.integers(len(BG_STYLES)))],
        floor_colour=tuple(int(x) for x in floor),
        horizon=float(rng.uniform(0.62, 0.85)),
        gain=float(np.clip(np.exp(rng.normal(0.0, 0.25 * s)), 0.55, 1.5)),
        cast=tuple(float(1 + rng.uniform(-0.28, 0.28) * s) for _ in range(3)),
        blur=float(rng.uniform(0.0, 0.9) * s),
        noise=float(rng.uniform(2.0, 9.0) * s),
        lowres=float(1 + rng.uniform(0.0, 1.6) * s),
        view_probs=tuple(float(x) for x in views / views.sum()),
        scale=float(1 - rng.uniform(0.08, 0.3) * min(s, 1.5)),
        jitter=float(s),
        occlusion=float(np.clip(rng.uniform(0.1, 0.4) * s, 0, 0.7)),
        ir_level=int(rng.integers(25, 75)),
        ir_person=int(rng.integers(-25, 15)),
    )


@lru_cache(maxsize=256)
def render_background(cam: Camera, height: int, width: int, modality: str = "rgb") -> Image.Image:
    """The camera's empty scene (shared, never drawn on), a little larger than the crop so each image can
    frame it differently."""
    pad_h, pad_w = max(2, height // 8), max(2, width // 8)
    h, w = height + 2 * pad_h, width + 2 * pad_w
    if modality == "ir":
        bg, accent, floor = cam.ir_level, cam.ir_level + 12, cam.ir_level - 10
        mode = "L"
    else:
        bg, accent, floor = cam.bg_colour, cam.bg_accent, cam.floor_colour
        mode = "RGB"
    img = Image.new(mode, (w, h), bg)
    d = ImageDraw.Draw(img)
    u = max(1, height // 32)
    horizon = int(h * cam.horizon)
    if cam.bg_style == "tiles":
        for x in range(0, w, 6 * u):
            d.rectangle([x, 0, x + u - 1, horizon], fill=accent)
        for y in range(0, horizon, 6 * u):
            d.rectangle([0, y, w, y + u - 1], fill=accent)
    elif cam.bg_style == "stripes":
        for x in range(0, w, 5 * u):
            d.rectangle([x, 0, x + 2 * u - 1, horizon], fill=accent)
    elif cam.bg_style == "bricks":
        for row, y in enumerate(range(0, horizon, 3 * u)):
            d.rectangle([0, y, w, y], fill=accent)
            off = (row % 2) * 4 * u
            for x in range(off, w, 8 * u):
                d.rectangle([x, y, x, y + 3 * u], fill=accent)
    elif cam.bg_style == "gradient":
        steps = 8
        for k in range(steps):
            t = k / (steps - 1)
            colour = (int(accent * t + bg * (1 - t)) if mode == "L"
                      else tuple(int(a * t + b * (1 - t)) for a, b in zip(accent, bg)))
            d.rectangle([0, int(k * horizon / steps), w, int((k + 1) * horizon / steps)], fill=colour)
    d.rectangle([0, horizon, w, h], fill=floor)
    for x in range(0, w, 10 * u):  # floor joints give the floor some perspective texture
        d.line([(x, horizon), (x - 4 * u, h)], fill=accent, width=1)
    return img


# ----------------------------------------------------------------------------------------------------------
# 4. Rendering one person
# ----------------------------------------------------------------------------------------------------------
def _rgb(name: str, shade: tuple[int, int, int] = (0, 0, 0)) -> tuple[int, int, int]:
    base = COLOURS[name]
    return tuple(int(min(255, max(0, c + s))) for c, s in zip(base, shade))


def _fills(ident: Identity, modality: str, rng: np.random.Generator) -> dict:
    """Paint for every body part: RGB colours, or temperatures (0-255) in infrared."""
    if modality == "ir":
        warm = 6 * ident.warmth
        def dye(name, base=100, scale=0.9):  # a garment's grey level follows its dye's NIR reflectance
            return int(base + warm + scale * IR_REFLECTANCE[name])
        upper = dye(ident.upper_colour)
        return {
            "skin": 215, "hair": 70 + HAIR_IR[ident.hair_colour], "upper": upper,
            "pattern": dye(ident.pattern_colour), "logo": dye(ident.pattern_colour),
            "lower": dye(ident.lower_colour, base=92), "shoes": dye(ident.shoes_colour, base=80, scale=0.4),
            "bag": dye(ident.bag_colour, base=85, scale=0.6) if ident.bag_type != "none" else None,
        }
    shade = tuple(int(s + j) for s, j in zip(ident.shade, rng.integers(-4, 5, size=3)))
    return {
        "skin": SKIN_TONES[ident.skin_tone], "hair": HAIR_COLOURS[ident.hair_colour],
        "upper": _rgb(ident.upper_colour, shade), "pattern": _rgb(ident.pattern_colour, shade),
        "logo": _rgb(ident.pattern_colour, shade), "lower": _rgb(ident.lower_colour, shade),
        "shoes": _rgb(ident.shoes_colour), "bag": _rgb(ident.bag_colour) if ident.bag_type != "none" else None,
    }


def _draw_person(d: ImageDraw.ImageDraw, ident: Identity, f: dict, view: str, cx: float, foot: float,
                 ph: float, facing: int, stride: float, swing: float) -> None:
    """Flat-shaded pedestrian of height ``ph`` pixels standing at (cx, foot)."""
    top = foot - ph
    def y(t: float) -> float:
        return top + t * ph
    def box(x0, y0, x1, y1, fill):
        x0, x1 = sorted((round(x0), round(x1)))
        y0, y1 = sorted((round(y0), round(y1)))
        d.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], fill=fill)

    side = view == "side"
    bw = ident.body_width
    sw = 0.125 * ph * bw * (0.62 if side else 1.0)  # half shoulder width
    hw = 0.095 * ph * bw * (0.7 if side else 1.0)  # half hip width
    aw = max(1.0, 0.05 * ph)  # arm width
    hr = 0.058 * ph  # head half-width
    lw = max(1.0, 0.035 * ph)  # strap / line width
    short_sleeve = ident.sleeve == "short"
    bag = f["bag"]

    # long hair falls behind the shoulders when seen from the front
    if ident.hair_length == "long" and view == "front":
        box(cx - hr * 1.15, y(0.04), cx + hr * 1.15, y(0.25), f["hair"])
    if side and ident.bag_type == "backpack":
        box(cx - facing * (sw + 0.085 * ph), y(0.18), cx - facing * sw + facing, y(0.43), bag)

    # legs and lower garment
    leg_top, knee, ankle = y(0.5), y(0.68), y(0.95)
    legs_fill = f["lower"] if ident.lower_type == "trousers" else f["skin"]
    if side:
        for sgn in (-1, 1):
            fx = cx + sgn * stride * 0.11 * ph
            d.polygon([(cx - hw * 0.6, leg_top), (cx + hw * 0.6, leg_top), (fx + hw * 0.55, ankle),
                       (fx - hw * 0.55, ankle)], fill=legs_fill)
            box(fx - hw * 0.6 + facing * 0.02 * ph, ankle, fx + hw * 0.6 + facing * 0.04 * ph, y(1.0), f["shoes"])
        if ident.lower_type == "shorts":
            box(cx - hw, leg_top, cx + hw, knee, f["lower"])
    else:
        gap = max(0.5, 0.12 * hw)
        lift = stride * 0.02 * ph
        for sgn, dy in ((-1, lift), (1, -lift)):
            x_in, x_out = cx + sgn * gap, cx + sgn * hw
            box(min(x_in, x_out), leg_top, max(x_in, x_out), ankle - dy, legs_fill)
            if ident.lower_type == "shorts":
                box(min(x_in, x_out), leg_top, max(x_in, x_out), knee, f["lower"])
            box(min(x_in, x_out) - 0.01 * ph, ankle - dy, max(x_in, x_out) + 0.01 * ph, y(1.0) - dy, f["shoes"])
    box(cx - hw, leg_top - 0.01 * ph, cx + hw, y(0.56), f["lower"])
    if ident.lower_type == "skirt":
        flare = 1.5 if not side else 1.25
        d.polygon([(cx - hw, leg_top - 0.01 * ph), (cx + hw, leg_top - 0.01 * ph), (cx + hw * flare, y(0.72)),
                   (cx - hw * flare, y(0.72))], fill=f["lower"])

    # arms (front/back: both beside the torso; side: one swinging arm drawn after the torso)
    sleeve_end = y(0.29) if short_sleeve else y(0.47)
    if not side:
        for sgn in (-1, 1):
            x0, x1 = sorted((cx + sgn * sw, cx + sgn * (sw + aw)))
            a = sgn * swing * 0.015 * ph
            box(x0, y(0.17), x1, y(0.52) + a, f["skin"])
            box(x0, y(0.17), x1, sleeve_end + a, f["upper"])

    # torso with its pattern
    torso = [(cx - sw, y(0.16)), (cx + sw, y(0.16)), (cx + hw * 1.08, y(0.52)), (cx - hw * 1.08, y(0.52))]
    d.polygon(torso, fill=f["upper"])
    period = max(2.0, 0.055 * ph)
    if ident.upper_pattern in ("striped", "checked"):
        t = y(0.19)
        while t < y(0.5):
            box(cx - sw * 0.95, t, cx + sw * 0.95, t + period / 2, f["pattern"])
            t += period
        if ident.upper_pattern == "checked":
            xx = cx - sw * 0.9
            while xx < cx + sw * 0.9:
                box(xx, y(0.18), xx + period / 2, y(0.5), f["pattern"])
                xx += period
    if ident.upper_pattern == "logo" and view == "front":
        box(cx - 0.045 * ph, y(0.23), cx + 0.045 * ph, y(0.31), f["logo"])

    # neck and head
    box(cx - hr * 0.45, y(0.11), cx + hr * 0.45, y(0.17), f["skin"])
    head = [cx - hr, y(0.015), cx + hr, y(0.135)]
    if view == "back":
        d.ellipse(head, fill=f["hair"])
        if ident.hair_length == "long":
            box(cx - hr * 1.1, y(0.07), cx + hr * 1.1, y(0.3), f["hair"])
    elif view == "front":
        d.ellipse(head, fill=f["skin"])
        d.ellipse([cx - hr * 1.05, y(0.005), cx + hr * 1.05, y(0.08)], fill=f["hair"])
    else:
        d.ellipse(head, fill=f["skin"])
        back_x = cx - facing * hr * 1.05
        d.ellipse([cx - hr * 1.05, y(0.005), cx + hr * 1.05, y(0.075)], fill=f["hair"])
        box(min(back_x, cx), y(0.03), max(back_x, cx), y(0.1 if ident.hair_length == "short" else 0.27),
            f["hair"])

    # side view: the near arm swings over the torso
    if side:
        hand_x = cx + swing * 0.07 * ph
        arm = [(cx - aw * 0.6, y(0.17)), (cx + aw * 0.6, y(0.17)), (hand_x + aw * 0.6, y(0.5)),
               (hand_x - aw * 0.6, y(0.5))]
        d.polygon(arm, fill=f["skin"])
        if short_sleeve:
            box(cx - aw * 0.7, y(0.17), cx + aw * 0.7, y(0.29), f["upper"])
        else:
            d.polygon([arm[0], arm[1], (hand_x + aw * 0.6, y(0.46)), (hand_x - aw * 0.6, y(0.46))], fill=f["upper"])

    # bags
    if ident.bag_type == "backpack":
        if view == "back":
            box(cx - 0.1 * ph * bw, y(0.18), cx + 0.1 * ph * bw, y(0.43), bag)
        elif view == "front":
            for sgn in (-1, 1):
                x = cx + sgn * sw * 0.6
                box(x - lw / 2, y(0.16), x + lw / 2, y(0.33), bag)
    elif ident.bag_type == "handbag":
        sgn = ident.bag_side * (1 if view == "front" else -1)
        x = cx + swing * 0.07 * ph if side else cx + sgn * (sw + aw * 0.5)
        box(x - 0.045 * ph, y(0.46), x + 0.045 * ph, y(0.58), bag)
    elif ident.bag_type == "shoulder bag":
        sgn = ident.bag_side * (1 if view == "front" else -1)
        if side:
            box(cx - lw / 2, y(0.16), cx + lw / 2, y(0.44), bag)
            x = cx - facing * hw
        else:
            d.line([(cx - sgn * sw * 0.8, y(0.17)), (cx + sgn * hw, y(0.44))], fill=bag, width=round(lw))
            x = cx + sgn * (hw + 0.02 * ph)
        box(x - 0.05 * ph, y(0.42), x + 0.05 * ph, y(0.53), bag)


def _occlude(d: ImageDraw.ImageDraw, cam: Camera, rng: np.random.Generator, height: int, width: int,
             modality: str) -> None:
    kind = int(rng.integers(3))
    ir = modality == "ir"
    if kind == 0:  # pole
        w = rng.uniform(0.08, 0.16) * width
        x = rng.uniform(0, width - w)
        d.rectangle([round(x), 0, round(x + w), height], fill=cam.ir_level - 8 if ir else cam.bg_accent)
    elif kind == 1:  # bench, bin or car in front of the legs
        y0 = rng.uniform(0.62, 0.85) * height
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, size=2) * width)
        colour = cam.ir_level + 5 if ir else tuple(int(c) for c in rng.integers(20, 230, size=3))
        d.rectangle([round(x0), round(y0), round(max(x1, x0 + width * 0.4)), height], fill=colour)
    else:  # a passer-by cut by the crop edge
        w = rng.uniform(0.18, 0.32) * width
        x0 = -1 if rng.random() < 0.5 else width - w
        names = list(COLOURS)
        top = 150 if ir else COLOURS[names[int(rng.integers(len(names)))]]
        bottom = 136 if ir else COLOURS[names[int(rng.integers(len(names)))]]
        y_mid = rng.uniform(0.45, 0.55) * height
        d.rectangle([round(x0), round(0.12 * height), round(x0 + w), round(y_mid)], fill=top)
        d.rectangle([round(x0), round(y_mid), round(x0 + w), height], fill=bottom)


def render_person(identity: Identity, cam: Camera | int, view: str | None, rng: np.random.Generator,
                  height: int = 128, width: int = 64, modality: str = "rgb", *, facing: int | None = None,
                  offset: tuple[float, float] | None = None, with_mask: bool = False):
    """One crop of ``identity`` seen by ``cam`` (a Camera, or a global camera index in world seed 0).

    ``view`` None draws one from the camera's viewpoint habits. ``modality`` "ir" renders a thermal-like
    grey image (returned as RGB with three equal channels). ``facing``/``offset`` let a caller keep the
    walking direction and framing coherent across the frames of a sequence. ``with_mask`` returns
    (image, mask): a boolean H x W array of the person's visible pixels (occluders removed), same draws.
    """
    if modality not in ("rgb", "ir"):
        raise ValueError(f"modality {modality!r}: expected 'rgb' or 'ir'")
    if isinstance(cam, (int, np.integer)):
        cam = make_camera(int(cam))
    if view is None:
        view = VIEWS[int(rng.choice(3, p=cam.view_probs))]
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: expected one of {VIEWS}")
    j = cam.jitter

    # 1. scene, cropped at this detection's offset
    bg = render_background(cam, height, width, modality)  # crop() below copies it
    pad_w, pad_h = (bg.width - width) // 2, (bg.height - height) // 2
    ox, oy = offset if offset is not None else rng.uniform(-1, 1, size=2)
    left = int(round(pad_w + ox * pad_w * min(j, 1.0)))
    upper = int(round(pad_h + oy * pad_h * min(j, 1.0)))
    img = bg.crop((left, upper, left + width, upper + height))

    # 2. the person
    scene = np.asarray(img).copy() if with_mask else None
    d = ImageDraw.Draw(img)
    ph = height * cam.scale * identity.body_height * (1 + rng.uniform(-0.06, 0.06) * j)
    cx = width / 2 + rng.uniform(-0.07, 0.07) * j * width
    foot = height * (0.985 + rng.uniform(-0.035, 0.01) * j)
    facing = facing if facing is not None else int(rng.choice([-1, 1]))
    _draw_person(d, identity, _fills(identity, modality, rng), view, cx, foot, ph, facing,
                 stride=float(rng.uniform(-1, 1)), swing=float(rng.uniform(-1, 1)))
    mask = None
    if with_mask:
        drawn = np.asarray(img).copy()
        mask = _changed(drawn, scene)
    if rng.random() < cam.occlusion:
        _occlude(d, cam, rng, height, width, modality)
        if with_mask:
            mask &= ~_changed(np.asarray(img), drawn)

    # 3. optics: resolution, blur, illumination, colour cast, sensor noise
    if cam.lowres > 1.05:
        small = (max(4, round(width / cam.lowres)), max(8, round(height / cam.lowres)))
        img = img.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
    radius = (cam.blur + (0.35 if modality == "ir" else 0.0)) * height / 64
    if radius > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float32)
    gain = cam.gain * (1 + rng.uniform(-0.08, 0.08) * j)
    if modality == "ir":
        arr = arr * (0.85 + 0.15 * gain) + (arr > cam.ir_level + 40) * cam.ir_person
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * (cam.noise + 2.0)
        grey = np.clip(arr, 0, 255).astype(np.uint8)
        out = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    else:
        arr = arr * (gain * np.asarray(cam.cast, dtype=np.float32))
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * cam.noise
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return (out, mask) if with_mask else out


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a != b
    return diff.any(axis=2) if diff.ndim == 3 else diff


def render_identity_images(identity: Identity, n: int, rng: np.random.Generator, height: int = 128,
                           width: int = 64, cams: Sequence[Camera | int] = (1, 2, 3, 4),
                           modality: str = "rgb") -> list[Image.Image]:
    """``n`` crops of one person spread round-robin over ``cams`` (e.g. a "new" person's upload)."""
    if n < 0 or not cams:
        raise ValueError("render_identity_images: need n >= 0 and at least one camera")
    cams = [make_camera(c) if isinstance(c, (int, np.integer)) else c for c in cams]
    return [render_person(identity, cams[k % len(cams)], None, rng, height, width, modality) for k in range(n)]


# ----------------------------------------------------------------------------------------------------------
# 5. The world writer
# ----------------------------------------------------------------------------------------------------------
class ToyWorldConfig(StageConfig):
    """A rendered toy world. Image names follow Market-1501 (or SYSU-MM01 with ``layout: sysu``)."""

    ids_train: int = Field(100, ge=1, description="training identities (Market has 751)")
    ids_test: int = Field(100, ge=1, description="test identities shared by query and gallery (Market has 750)")
    ids_val: int = Field(0, ge=0, description="sysu layout only: identities listed in exp/val_id.txt")
    cams: int = Field(6, ge=2, le=9, description="Market has 6; cross-camera matching needs at least 2")
    images_per_cam: tuple[int, int] = Field((3, 8), description="images per identity per camera, inclusive "
                                            "range; the frames of one camera form a consecutive sequence")
    cam_presence: float = Field(0.75, gt=0, le=1, description="chance a camera sees a given identity "
                                "(at least 2 always do), so identities differ in camera coverage as in Market")
    query_per_cam: int = Field(1, ge=1, description="Market protocol: one query per test identity per camera")
    height: int = Field(128, ge=16, le=1024, description="Market crops are 128x64")
    width: int = Field(64, ge=8, le=512, description="Market crops are 128x64")
    seed: int = Field(0, ge=0, description="everything (identities, cameras, frames) derives from it")
    nuisance: float = Field(1.0, ge=0, le=2, description="camera shift strength; 1 leaves a trained ResNet "
                            "clearly ahead of random init without saturating")
    ir_cams: list[int] = Field(default_factory=list, description="1-based cameras that render infrared "
                               "(SYSU-MM01 uses 3,6)")
    pid_offset: int = Field(0, ge=0, description="pids start at pid_offset+1, so worlds with disjoint "
                            "identity pools can be made")
    cam_offset: int = Field(0, ge=0, description="camera c looks like global camera cam_offset+c, so a "
                            "second world can use other cameras")
    layout: Literal["market", "sysu"] = Field("market", description="market = Market-1501 folders; sysu = "
                                              "SYSU-MM01 cam folders + exp/*_id.txt")
    jpeg_quality: int = Field(92, ge=50, le=100, description="close to lossless at a fraction of PNG's size")

    @model_validator(mode="after")
    def _check(self) -> "ToyWorldConfig":
        lo, hi = self.images_per_cam
        if not 1 <= lo <= hi:
            raise ValueError(f"images_per_cam: expected 1 <= low <= high, got {list(self.images_per_cam)}")
        if self.layout == "market" and lo < self.query_per_cam + 1:
            raise ValueError(f"images_per_cam low ({lo}) must exceed query_per_cam ({self.query_per_cam}) "
                             "so every camera keeps gallery images")
        if self.layout == "market" and self.ids_val:
            raise ValueError("ids_val is only written by the sysu layout; set it to 0 for market")
        last = self.pid_offset + self.ids_train + self.ids_val + self.ids_test
        if last > 9999:
            raise ValueError(f"pid_offset + identities = {last}: Market names hold 4-digit pids (<= 9999)")
        bad = [c for c in self.ir_cams if not 1 <= c <= self.cams]
        if bad or len(set(self.ir_cams)) != len(self.ir_cams):
            raise ValueError(f"ir_cams {self.ir_cams}: expected distinct cameras in 1..{self.cams}")
        if self.ir_cams and len(self.ir_cams) == self.cams:
            raise ValueError("ir_cams: at least one camera must stay RGB")
        return self


def world_identities(cfg: ToyWorldConfig) -> list[tuple[Identity, str]]:
    """The (identity, split) pairs of a world, in pid order: train, then val (sysu), then test."""
    splits = ["train"] * cfg.ids_train + ["val"] * cfg.ids_val + ["test"] * cfg.ids_test
    return [(sample_identity(np.random.default_rng([cfg.seed, 104729, pid]), pid), split)
            for pid, split in zip(range(cfg.pid_offset + 1, cfg.pid_offset + 1 + len(splits)), splits)]


def world_cameras(cfg: ToyWorldConfig) -> list[Camera]:
    """The world's cameras; element c-1 is camera c of the file names."""
    return [make_camera(cfg.cam_offset + c, cfg.seed, cfg.nuisance) for c in range(1, cfg.cams + 1)]


@dataclass
class _Shot:
    pid: int
    cam: int  # 1-based
    frame: int
    image: Image.Image = field(repr=False)


def _sequences(ident: Identity, cfg: ToyWorldConfig, cameras: list[Camera]):
    """Yield, per camera that sees this person, the consecutive frames of one walk past that camera."""
    rng = np.random.default_rng([cfg.seed, 15485863, ident.pid])
    rgb = [c for c in range(1, cfg.cams + 1) if c not in cfg.ir_cams]
    seen = [c for c in range(1, cfg.cams + 1) if rng.random() < cfg.cam_presence]
    must = [int(rng.choice(rgb))]  # every person is seen in RGB, and in IR when the world has IR cameras
    if cfg.ir_cams:
        must.append(int(rng.choice(cfg.ir_cams)))
    pool = [c for c in range(1, cfg.cams + 1) if c not in must]
    while len(set(must) | set(seen)) < 2:
        must.append(int(rng.choice(pool)))
    lo, hi = cfg.images_per_cam
    for cam_no in sorted(set(must) | set(seen)):
        cam = cameras[cam_no - 1]
        modality = "ir" if cam_no in cfg.ir_cams else "rgb"
        srng = np.random.default_rng([cfg.seed, 32452843, ident.pid, cam.index])
        n = int(srng.integers(lo, hi + 1))
        frame = int(srng.integers(1, 4000))
        step = int(srng.integers(2, 9))
        view = VIEWS[int(srng.choice(3, p=cam.view_probs))]
        facing = int(srng.choice([-1, 1]))
        offset = srng.uniform(-1, 1, size=2)
        shots = []
        for _ in range(n):
            if srng.random() < 0.15:  # people turn now and then
                view = VIEWS[int(srng.choice(3, p=cam.view_probs))]
            offset = np.clip(offset + srng.normal(0, 0.25, size=2), -1, 1)
            img = render_person(ident, cam, view, srng, cfg.height, cfg.width, modality, facing=facing,
                                offset=(float(offset[0]), float(offset[1])))
            shots.append(_Shot(ident.pid, cam_no, frame, img))
            frame += step
        yield cam_no, shots


def render_world(cfg: ToyWorldConfig, out_dir: str | Path, progress: bool | None = None) -> Path:
    """Write the world to ``out_dir`` and return it. The tree is built in a temp folder and renamed into
    place, so ``out_dir`` is either absent or complete; re-running with the same config is a no-op."""
    # 1. check the target
    out = Path(out_dir)
    stamp = out / "toyworld.yaml"
    if stamp.is_file():
        try:
            existing = ToyWorldConfig.load(stamp)
        except ConfigError:
            existing = None
        if existing == cfg:
            return out
        raise ConfigError(f"{out} already holds a toy world with a different config ({stamp}); "
                          "choose another --out or delete it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another --out")

    # 2. render into a temp folder beside the target
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_tree(cfg, tmp, progress)
        cfg.to_yaml(tmp / "toyworld.yaml")
        # 3. publish
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tree(cfg: ToyWorldConfig, root: Path, progress: bool | None) -> None:
    from tqdm import tqdm

    cameras = world_cameras(cfg)
    people = world_identities(cfg)
    save = dict(format="JPEG", quality=cfg.jpeg_quality)
    if cfg.layout == "market":
        for sub in ("bounding_box_train", "bounding_box_test", "query"):
            (root / sub).mkdir()
    else:
        for c in range(1, cfg.cams + 1):
            (root / f"cam{c}").mkdir()
        (root / "exp").mkdir()
    bar = tqdm(people, desc="toy world", unit="id", disable=(None if progress is None else not progress))
    for ident, split in bar:
        qrng = np.random.default_rng([cfg.seed, 49979687, ident.pid])
        for cam_no, shots in _sequences(ident, cfg, cameras):
            if cfg.layout == "sysu":
                folder = root / f"cam{cam_no}" / f"{ident.pid:04d}"
                folder.mkdir()
                for n, shot in enumerate(shots, start=1):
                    shot.image.save(folder / f"{n:04d}.jpg", **save)
                continue
            queries = set()
            if split == "test":
                queries = set(qrng.choice(len(shots), size=cfg.query_per_cam, replace=False).tolist())
            for k, shot in enumerate(shots):
                sub = "bounding_box_train" if split == "train" else ("query" if k in queries else "bounding_box_test")
                shot.image.save(root / sub / f"{shot.pid:04d}_c{shot.cam}s1_{shot.frame:06d}_00.jpg", **save)
    _write_attributes(people, root / "attributes.parquet")
    if cfg.layout == "sysu":
        for split in ("train", "val", "test"):
            ids = [str(i.pid) for i, s in people if s == split]
            (root / "exp" / f"{split}_id.txt").write_text(",".join(ids) + "\n")


def _write_attributes(people: list[tuple[Identity, str]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for ident, split in people:
        rows.append({"pid": ident.pid, "split": split, **ident.to_row(), "caption": describe(ident)})
    pq.write_table(pa.Table.from_pylist(rows), path)


def read_attributes(root: str | Path):
    """The attribute table of a rendered world as a pandas DataFrame (one row per identity)."""
    import pandas as pd

    path = Path(root) / "attributes.parquet"
    if not path.is_file():
        from diffreid.data.types import DatasetError

        raise DatasetError(f"{path} not found: expected a toy world rendered by `diffreid toyworld`")
    return pd.read_parquet(path)
