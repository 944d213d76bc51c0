"""Slot Leases: acquire, renew, release and fencing, against the in-memory Lease API of conftest
(real compare-and-swap on resourceVersion, the fake API server's clock)."""

from __future__ import annotations

import pytest

from warmbuild.errors import LeaseLost
from warmbuild.kube.names import (
    RELEASE_TOKEN_HASH_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION,
    WORKLOAD_KEY_ANNOTATION_MAX,
    WORKLOAD_KEY_HASH_ANNOTATION,
    leases_path,
)
from warmbuild.kube.views import parse_lease
from warmbuild.pool.leases import (
    HolderInfo,
    NotYourSlot,
    list_pool_leases,
    release_slot,
    renew_slot,
    try_acquire_slot,
)
from warmbuild.pool.membership import Builder
from warmbuild.pool.placement import affine_holders
from warmbuild.pool.workload import key_hash

NS, POOL = "ns", "default"
BUILDER = Builder("builder-0", "pod-uid-0", "tcp://10.0.0.1:1234", slots=1)


def acquire(api, identity: str, known=None, builder: Builder = BUILDER, duration: int = 15, **holder):
    known = list_pool_leases(api, NS, POOL) if known is None else known
    return try_acquire_slot(api, NS, POOL, builder, HolderInfo(identity, **holder), known, duration)


def lease(api, name: str = "builder-0-slot-0"):
    return parse_lease(api.get(NS, name))


def test_two_holders_racing_for_a_new_slot_exactly_one_wins(lease_api):
    seen = list_pool_leases(lease_api, NS, POOL)  # both looked before either wrote: no Lease yet
    results = [acquire(lease_api, "a", seen), acquire(lease_api, "b", seen)]
    assert [r is not None for r in results] == [True, False]
    assert lease(lease_api).holder == "a"


def test_two_holders_racing_for_a_free_slot_exactly_one_wins(lease_api):
    first = acquire(lease_api, "first")
    assert release_slot(lease_api, NS, first.name, "first")
    seen = list_pool_leases(lease_api, NS, POOL)  # the same free Lease, same resourceVersion, for both
    results = [acquire(lease_api, "a", seen), acquire(lease_api, "b", seen)]
    assert [r is not None for r in results] == [True, False]
    assert lease(lease_api).holder == "a" and lease(lease_api).transitions == 2


def test_a_held_slot_is_not_taken(lease_api):
    assert acquire(lease_api, "a") is not None
    lease_api.advance(14)  # not expired yet by the server's clock
    assert acquire(lease_api, "b") is None


def test_an_expired_lease_is_taken_over_and_transitions_increments(lease_api):
    held = acquire(lease_api, "a", duration=15)
    assert held.transitions == 1
    lease_api.advance(16)  # the server's clock: the holder stopped renewing 16 s ago
    assert lease(lease_api).is_free(lease_api.server_now())
    taken = acquire(lease_api, "b")
    assert taken is not None and taken.transitions == 2 and taken.fencing_token == "builder-0-slot-0/2"
    assert lease(lease_api).holder == "b"


def test_renewal_extends_the_hold(lease_api):
    held = acquire(lease_api, "a")
    lease_api.advance(10)
    renewed = renew_slot(lease_api, held)
    assert renewed.resource_version != held.resource_version
    lease_api.advance(10)  # 20 s after acquiring, 10 s after renewing
    assert not lease(lease_api).is_free(lease_api.server_now())


def test_renewal_by_a_fenced_holder_raises_lease_lost(lease_api):
    held = acquire(lease_api, "a")
    lease_api.advance(16)
    assert acquire(lease_api, "b") is not None
    with pytest.raises(LeaseLost, match="now held by b"):
        renew_slot(lease_api, held)


def test_renewal_after_the_lease_was_deleted_raises_lease_lost(lease_api):
    held = acquire(lease_api, "a")
    lease_api.request("DELETE", leases_path(NS, held.name))
    with pytest.raises(LeaseLost, match="deleted"):
        renew_slot(lease_api, held)


def test_release_is_idempotent_and_releases_only_its_own_holders_slot(lease_api):
    held = acquire(lease_api, "a")
    assert not release_slot(lease_api, NS, held.name, "someone-else")
    assert lease(lease_api).holder == "a"
    assert release_slot(lease_api, NS, held.name, "a")
    assert not release_slot(lease_api, NS, held.name, "a")  # second call: nothing to do
    assert not release_slot(lease_api, NS, "no-such-lease", "a")
    view = lease(lease_api)
    assert view.holder == "" and view.is_free(lease_api.server_now()) and view.transitions == 1


def test_a_lease_owned_by_a_previous_pod_is_adopted_by_compare_and_swap_never_deleted(lease_api):
    old_pod = Builder(BUILDER.name, "pod-uid-old", BUILDER.address, slots=1)
    old = acquire(lease_api, "old", builder=old_pod)
    uid_before = lease(lease_api).uid
    # Still held by the old pod's holder: that pod is gone, so its hold means nothing.
    held = acquire(lease_api, "new")
    assert held is not None and held.transitions == 2
    view = lease(lease_api)
    assert view.uid == uid_before and view.holder == "new" and view.owner_uid == BUILDER.uid
    assert lease_api.get(NS, held.name)["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": BUILDER.name, "uid": BUILDER.uid}
    ]
    assert not [method for method, _ in lease_api.requests if method == "DELETE"]
    with pytest.raises(LeaseLost, match="now held by new"):
        renew_slot(lease_api, old)  # the old holder is fenced


def test_two_holders_racing_to_adopt_a_previous_pods_lease_exactly_one_wins(lease_api):
    old_pod = Builder(BUILDER.name, "pod-uid-old", BUILDER.address, slots=1)
    assert acquire(lease_api, "old", builder=old_pod) is not None
    seen = list_pool_leases(lease_api, NS, POOL)
    results = [acquire(lease_api, "a", seen), acquire(lease_api, "b", seen)]
    assert [r is not None for r in results] == [True, False]
    assert lease(lease_api).holder == "a" and lease(lease_api).owner_uid == BUILDER.uid


def test_the_workload_key_hash_is_written_and_cleared(lease_api):
    long_key = "repo|" + "x" * 400 + "|Dockerfile|"
    holder = dict(workload_key=long_key, workload_key_hash=key_hash(long_key), run_url="https://ci.example/run/1")
    held = acquire(lease_api, "a", **holder)
    annotations = lease_api.get(NS, held.name)["metadata"]["annotations"]
    assert annotations[WORKLOAD_KEY_HASH_ANNOTATION] == key_hash(long_key)
    assert annotations[WORKLOAD_KEY_ANNOTATION] == long_key[:WORKLOAD_KEY_ANNOTATION_MAX]
    # Readers use the stored hash of the whole key, not a hash of the capped text.
    lease_api.advance(5)
    views = list_pool_leases(lease_api, NS, POOL)
    assert affine_holders(views, BUILDER.name, lease_api.server_now()) == [(key_hash(long_key), 5.0)]
    assert release_slot(lease_api, NS, held.name, "a")
    annotations = lease_api.get(NS, held.name)["metadata"].get("annotations") or {}
    assert WORKLOAD_KEY_HASH_ANNOTATION not in annotations and WORKLOAD_KEY_ANNOTATION not in annotations
    # A take-over writes the new holder's hash.
    taken = acquire(lease_api, "b", workload_key="short", workload_key_hash=key_hash("short"))
    assert lease_api.get(NS, taken.name)["metadata"]["annotations"][WORKLOAD_KEY_HASH_ANNOTATION] == key_hash("short")


def test_a_release_token_hash_guards_renew_and_release_and_never_outlives_its_holder(lease_api):
    mine, theirs = "a" * 64, "b" * 64
    held = acquire(lease_api, "job-a@ci", release_token_hash=mine)
    assert lease(lease_api).release_token_hash == mine
    # Same holder name, wrong token: refused, whoever asks; the slot stays held.
    with pytest.raises(NotYourSlot, match="not your slot"):
        renew_slot(lease_api, held, token_hash=theirs)
    with pytest.raises(NotYourSlot, match="not your slot"):
        release_slot(lease_api, NS, held.name, "job-a@ci", token_hash=theirs)
    with pytest.raises(NotYourSlot):
        release_slot(lease_api, NS, held.name, "job-a@ci", token_hash="")
    assert lease(lease_api).holder == "job-a@ci"
    renewed = renew_slot(lease_api, held, token_hash=mine)
    assert release_slot(lease_api, NS, held.name, "job-a@ci", token_hash=mine)
    assert RELEASE_TOKEN_HASH_ANNOTATION not in (lease_api.get(NS, renewed.name)["metadata"].get("annotations") or {})
    # A direct (token-less) holder taking over an expired scheduler slot: the old hash is gone with
    # the old holder, so the old token cannot release the new holder's slot.
    held = acquire(lease_api, "job-a@ci", release_token_hash=mine, duration=3)
    lease_api.advance(10)
    taken = acquire(lease_api, "direct-runner")
    assert taken is not None and lease(lease_api).release_token_hash == ""
    with pytest.raises(NotYourSlot):
        release_slot(lease_api, NS, taken.name, "direct-runner", token_hash=mine)
    assert release_slot(lease_api, NS, taken.name, "direct-runner")  # direct mode: no token, no check


def test_the_fake_answers_stale_writes_with_409_and_missing_leases_with_404(lease_api):
    from warmbuild.kube.client import KubeConflict, KubeNotFound

    held = acquire(lease_api, "a")
    stale = lease_api.get(NS, held.name)
    renew_slot(lease_api, held)
    with pytest.raises(KubeConflict):
        lease_api.request("PUT", leases_path(NS, held.name), body=stale)
    with pytest.raises(KubeNotFound):
        lease_api.request("GET", leases_path(NS, "missing"))
