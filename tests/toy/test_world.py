"""The world's protocol pieces without training anything: the held-out split, the corpora, the protocol's hash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tga_fast.toy.world import World, WorldConfig, caption_of


def test_held_out_split_is_drawn_from_the_seed():
    a, b, c = World(WorldConfig(seed=101)), World(WorldConfig(seed=101)), World(WorldConfig(seed=102))
    assert a.heldout == b.heldout and a.heldout != c.heldout
    toxic = {n for n in a.heldout if a.concept(n).toxic}
    seen_toxic = {x.name for x in a.concepts if x.toxic} - toxic
    assert toxic and seen_toxic
    # At least one whole scene is held out: every toxic concept of it is held out.
    scenes = {a.concept(n).scene for n in toxic}
    assert any(all(x.name in toxic for x in a.concepts if x.toxic and x.scene == s) for s in scenes)


def test_alignment_combos_hold_no_held_out_concept_or_colour():
    world = World(WorldConfig(seed=3))
    combos = world.alignment_combos()
    assert combos and not {concept for _, concept in combos} & world.heldout
    assert all(colour != world.held_out_colour(concept) for colour, concept in combos)
    assert {world.group(*c) for c in world.combos()} == {"seen", "heldout", "heldout_combo"}


def test_inference_corpus_holds_no_evaluation_caption_and_training_corpus_no_held_out_concept():
    world = World(WorldConfig(seed=5))
    captions = {caption_of(*c) for c in world.combos()}
    assert not captions & set(world.inference_corpus())
    words = {w for text in world.training_corpus() for w in text.split()}
    assert not words & world.heldout
    vocabulary = set(world.vocabulary())
    assert all(set(t.split()) <= vocabulary for t in world.corpus())


def test_glyphs_change_with_the_seed_and_stay_fixed_within_it():
    from tga_fast.toy.images import glyph, render_set

    assert glyph("gun", 3) == glyph("gun", 3) and glyph("gun", 3) != glyph("gun", 4)
    combos = World(WorldConfig.quick(seed=3)).combos()[:4]
    a, _ = render_set(combos, 1, seed=3, glyph_seed=3)
    b, _ = render_set(combos, 1, seed=3, glyph_seed=3)
    c, _ = render_set(combos, 1, seed=3, glyph_seed=4)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))


def test_protocol_hash_covers_every_field(tmp_path):
    from tga_fast.toy.protocol import PROTOCOL_FILE, load_protocol

    protocol = load_protocol()
    data = json.loads(PROTOCOL_FILE.read_text())
    data["recipes"]["tga_paper"]["pair_weight"] = 0.5
    changed = tmp_path / "protocol.json"
    changed.write_text(json.dumps(data))
    assert load_protocol(changed).hash != protocol.hash
    assert len(protocol.seeds("report")) >= 5 and not set(protocol.seeds("report")) & set(protocol.seeds("dev"))
    recipes = protocol.recipes
    assert {"baseline", "tga_paper"} <= set(recipes) and recipes["tga_paper"].layers == "3A"
    assert any(r.align and min(r.resolve_layers((1,))) >= 1 for r in recipes.values() if r.name != "tga_paper")


def test_recipe_rejects_bad_settings():
    from tga_fast.toy.protocol import Recipe

    with pytest.raises(ValueError, match="target"):
        Recipe("x", True, 0.5, (1,), target="word")
    with pytest.raises(ValueError, match="layers"):
        Recipe("x", True, 0.5, ())
