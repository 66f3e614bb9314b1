"""SeededSampler: epoch-seeded order and seeds, distributed shares, resume."""

from __future__ import annotations

import pickle

import pytest

from landseg.data.sampler import SeededSampler, derive_seed


def test_order_depends_on_seed_and_epoch_only() -> None:
    a = SeededSampler(20, seed=1, shuffle=True)
    b = SeededSampler(20, seed=1, shuffle=True)
    first = list(a)
    assert first == list(b) == list(a)
    assert sorted(i for i, _ in first) == list(range(20))
    assert first != list(SeededSampler(20, seed=2, shuffle=True))
    a.set_epoch(1)
    assert list(a) != first
    assert all(s == derive_seed(1, 1, i) for i, s in a)


def test_sample_seed_depends_on_index_not_position() -> None:
    shuffled = dict(SeededSampler(10, seed=3, shuffle=True))
    ordered = dict(SeededSampler(10, seed=3, shuffle=False))
    assert shuffled == ordered
    assert len(set(ordered.values())) == 10
    assert list(ordered) == list(range(10))


@pytest.mark.parametrize(("length", "replicas"), [(10, 3), (9, 3), (2, 4), (7, 1)])
def test_distributed_shares_are_equal_and_cover_everything(length: int, replicas: int) -> None:
    shares = [
        list(SeededSampler(length, seed=0, shuffle=True, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    per_rank = -(-length // replicas)
    assert all(len(share) == per_rank for share in shares)
    assert all(
        len(SeededSampler(length, seed=0, shuffle=True, num_replicas=replicas, rank=r)) == per_rank
        for r in range(replicas)
    )
    assert {i for share in shares for i, _ in share} == set(range(length))
    whole = list(SeededSampler(length, seed=0, shuffle=True))
    assert [x for share in zip(*shares, strict=True) for x in share][:length] == whole


def test_distributed_drop_last() -> None:
    shares = [
        list(SeededSampler(10, seed=0, shuffle=False, drop_last=True, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert (
        len(SeededSampler(10, seed=0, shuffle=False, drop_last=True, num_replicas=3, rank=0)) == 3
    )


def test_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank 3"):
        list(SeededSampler(4, seed=0, shuffle=False, num_replicas=3, rank=3))


def test_skip_next_resumes_mid_epoch_once() -> None:
    sampler = SeededSampler(12, seed=5, shuffle=True)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip_next(5)
    assert len(sampler) == 12  # Lightning reads the length once for every epoch
    assert list(sampler) == full[5:]
    assert list(sampler) == full


def test_state_dict_round_trip_and_pickle() -> None:
    sampler = SeededSampler(8, seed=5, shuffle=True)
    sampler.set_epoch(4)
    restored = SeededSampler(8, seed=5, shuffle=True)
    restored.load_state_dict(sampler.state_dict())
    assert restored.epoch == 4 and list(restored) == list(sampler)
    assert list(pickle.loads(pickle.dumps(sampler))) == list(sampler)
