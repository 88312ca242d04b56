"""The world's pre-registered protocol (``protocol.json``): the recipes compared, their layers and weights, the
sizes, the dev seeds (used while tuning) and the report seeds (never used while tuning), fixed before any reported
run. Every report prints the file's hash; changing anything in it is a new version with fresh report seeds.

    protocol = load_protocol()
    protocol.hash           # sha256 of the file's canonical JSON, first 16 hex digits
    protocol.recipes["tga_paper"].layers   # "3A": the world's own safety layers, resolved per seed
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

PROTOCOL_FILE = Path(__file__).with_name("protocol.json")
TARGETS = ("caption", "object")


@dataclass(frozen=True)
class Recipe:
    """One alignment of the protocol. ``layers``: HF layer numbers, or ``"3A"`` (the text LLM's located safety
    layers). ``target``: the teacher text, ``"caption"`` ("a red gun") or ``"object"`` ("gun").
    ``retrieved_share``: the share of stage-2 image prompts that carry the retrieved text (the hinge term is summed
    over those)."""

    name: str
    align: bool
    retrieved_share: float
    layers: tuple[int, ...] | str = ()
    target: str = "caption"
    pair_weight: float = 0.0
    hinge_weight: float = 0.0
    what: str = ""

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"recipe {self.name}: target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 <= self.retrieved_share <= 1.0:
            raise ValueError(f"recipe {self.name}: retrieved_share must be in [0, 1], got {self.retrieved_share}")
        if self.align and not self.layers:
            raise ValueError(f"recipe {self.name}: an alignment needs its layers")

    def resolve_layers(self, safety_layers: tuple[int, ...]) -> tuple[int, ...]:
        """The HF layer numbers of this run (``"3A"`` becomes ``safety_layers``)."""
        if self.layers == "3A":
            return tuple(safety_layers)
        return tuple(self.layers)


@dataclass(frozen=True)
class Protocol:
    data: dict
    hash: str

    @property
    def version(self) -> int:
        return int(self.data["version"])

    @property
    def recipes(self) -> dict[str, Recipe]:
        out = {}
        for name, spec in self.data["recipes"].items():
            spec = dict(spec)
            layers = spec.pop("layers", ())
            out[name] = Recipe(name=name, layers=layers if isinstance(layers, str) else tuple(layers), **spec)
        return out

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.data["conditions"])

    def ablation(self, name: str | None) -> "Protocol":
        """The protocol under one of its pre-registered ablations (its ``images`` settings replaced, its recipes
        only); ``None`` is the protocol itself. The hash names both."""
        if name is None:
            return self
        ablations = self.data.get("ablations", {})
        if name not in ablations:
            raise ValueError(f"ablation must be one of {sorted(ablations)}, got {name!r}")
        spec = ablations[name]
        data = json.loads(json.dumps(self.data))
        data["images"].update(spec.get("images", {}))
        data["recipes"] = {k: v for k, v in data["recipes"].items() if k in spec.get("recipes", data["recipes"])}
        data["ablation"] = name
        return Protocol(data, f"{self.hash}+{name}")

    def seeds(self, which: str) -> list[int]:
        if which not in self.data["seeds"]:
            raise ValueError(f"seed set must be one of {sorted(self.data['seeds'])}, got {which!r}")
        return list(self.data["seeds"][which])


def protocol_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def load_protocol(path=PROTOCOL_FILE) -> Protocol:
    data = json.loads(Path(path).read_text())
    return Protocol(data, protocol_hash(data))
