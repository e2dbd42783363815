"""The search space: string round trip, strict parsing, sampling, mutation, size, cost."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akd_base.errors import ArchStringError, SpaceError
from akd_mobile.space import ArchSpec, get_space, parse_shape

SPACES = [get_space("mnasnet-small"), get_space("mnasnet-imagenet"), get_space("mnasnet-small", (3, 32, 32), 10)]


def _arch(space, seed: int) -> ArchSpec:
    return space.sample(random.Random(seed))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SPACES), st.integers(0, 2**32))
def test_decode_inverts_encode(space, seed):
    arch = _arch(space, seed)
    text = space.encode(arch)
    assert space.decode(text) == arch
    assert space.from_indices(space.to_indices(arch)) == arch
    assert ArchSpec.from_json(json.dumps(arch.to_json())) == arch


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SPACES),
    st.integers(0, 2**32),
    st.integers(0, 10_000),
    st.sampled_from(["k7", "mb4", "se50", "skip", "f90", "l0", "l9", "", "K3", "conv ", "0"]),
)
def test_corrupted_token_is_rejected_and_named(space, seed, where, bad):
    text = space.encode(_arch(space, seed))
    groups = [g.split("_") for g in text.split("-")]
    flat = [(b, t) for b in range(len(groups)) for t in range(6)]
    b, t = flat[where % len(flat)]
    groups[b][t] = bad
    corrupted = "-".join("_".join(g) for g in groups)
    with pytest.raises(ArchStringError) as err:
        space.decode(corrupted)
    assert f"block {b + 1} token {t + 1} {bad!r}" in str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([" ", "--", "-", "_", "\n", "x"]), st.booleans())
def test_non_canonical_spellings_are_rejected(seed, junk, at_end):
    space = SPACES[0]
    text = space.encode(_arch(space, seed))
    corrupted = text + junk if at_end else junk + text
    with pytest.raises(ArchStringError):
        space.decode(corrupted)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "needs 7 blocks"),
        ("mb6_k3_se0_id_f100_l1", "needs 7 blocks"),
        ("-".join(["mb6_k3_se0_id_f100"] * 7), "needs 6 tokens"),
        ("-".join(["mb6_k3_se0_id_f100_l2_x"] * 7), "needs 6 tokens"),
        ("-".join(["mb6_k3_se0.25_id_f100_l2"] * 7), "token 3 'se0.25'"),
        ("-".join(["mb6_k3_se25_id_f1.0_l2"] * 7), "token 5 'f1.0'"),
        ("-".join(["mb6_k3_se25_id_f100_l02"] * 7), "token 6 'l02'"),
    ],
)
def test_malformed_strings_name_the_problem(text, message):
    with pytest.raises(ArchStringError, match=message.replace(".", r"\.")):
        get_space("mnasnet-small").decode(text)


def test_layer_choices_follow_base_depths_and_stay_positive():
    space = get_space("mnasnet-imagenet")
    assert [space.layer_choices(b) for b in range(7)] == [
        (1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (2, 3, 4), (2, 3, 4), (1, 2)
    ]


def test_size_is_the_product_of_the_choices():
    space = get_space("mnasnet-small")
    per_block = 4 * 2 * 2 * 3 * 3
    layers = [2, 3, 3, 3, 3, 3, 2]
    assert space.size() == math.prod(per_block * n for n in layers)
    assert len(space.decisions()) == 42


def test_sample_is_deterministic_and_covers_every_option():
    space = get_space("mnasnet-small")
    a = [space.sample(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    seen = [set() for _ in space.decisions()]
    for _ in range(300):
        for i, idx in enumerate(space.to_indices(space.sample(rng))):
            seen[i].add(idx)
    assert all(len(s) == len(opts) for s, (_, opts) in zip(seen, space.decisions()))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32))
def test_mutate_changes_exactly_one_decision(seed):
    space = get_space("mnasnet-small")
    rng = random.Random(seed)
    arch = space.sample(rng)
    child = space.mutate(arch, rng)
    diff = [i for i, (x, y) in enumerate(zip(space.to_indices(arch), space.to_indices(child))) if x != y]
    assert len(diff) == 1


def test_key_depends_on_space_shape_and_classes():
    small = get_space("mnasnet-small")
    arch = _arch(small, 1)
    other_shape = get_space("mnasnet-small", (3, 32, 32)).decode(arch.canonical)
    other_classes = get_space("mnasnet-small", None, 5).decode(arch.canonical)
    keys = {arch.key, other_shape.key, other_classes.key}
    assert len(keys) == 3
    assert all(len(k) == 12 for k in keys)
    assert arch.key == small.decode(arch.canonical).key


def test_arch_of_another_space_is_refused():
    arch = _arch(get_space("mnasnet-small"), 0)
    with pytest.raises(ArchStringError, match="does not belong"):
        get_space("mnasnet-small", (3, 32, 32)).plan(arch)


def test_bad_space_parameters():
    with pytest.raises(SpaceError, match="unknown search space 'nope'"):
        get_space("nope")
    with pytest.raises(SpaceError, match="28 to 32 px"):
        get_space("mnasnet-small", (1, 64, 64))
    with pytest.raises(SpaceError, match="3-channel"):
        get_space("mnasnet-imagenet", (1, 224, 224))
    with pytest.raises(SpaceError, match="at least 2 classes"):
        get_space("mnasnet-small", None, 1)
    with pytest.raises(SpaceError, match="CxHxW"):
        parse_shape("28x28")
    assert parse_shape("3x32x32") == (3, 32, 32)


def test_bad_json_is_an_arch_error():
    with pytest.raises(ArchStringError, match="not valid JSON"):
        ArchSpec.from_json("{")
    good = _arch(get_space("mnasnet-small"), 0).to_json()
    with pytest.raises(ArchStringError, match="does not match"):
        ArchSpec.from_json({**good, "key": "000000000000"})


def test_small_preset_spans_twenty_thousand_to_a_million_parameters():
    space = get_space("mnasnet-small")
    rng = random.Random(0)
    params = sorted(space.cost(space.sample(rng)).params for _ in range(500))
    assert 15_000 < params[0] and params[-1] < 1_000_000
    smallest = space.from_indices([1, 0, 0, 0, 0, 0] * 7)
    assert 15_000 < space.cost(smallest).params < 25_000
    assert 50_000 < params[len(params) // 2] < 300_000
