"""Maker-checker compares identities: RFC 8265 canonical names and UTS #39 skeletons, so a
case-, width- or script-changed spelling of a name is the same person (issue 12, defect 5)."""

from __future__ import annotations

import pytest

from refundry.records.events import IllegalTransition, RecordError

from .conftest import make_request

LARGE = {"client_id": "acme", "amount": "600"}  # manual review, two approvers (above 500)


@pytest.mark.parametrize("second", ["Bob", "BOB", "ｂｏｂ", "bоb", "ｂоＢ"])
def test_a_look_alike_of_the_first_approver_cannot_approve_again(store, record, second):
    record(make_request("r-1", **LARGE), actor="carol")
    store.review("r-1", actor="bob", approve=True)
    with pytest.raises(IllegalTransition, match="already approved"):
        store.review("r-1", actor=second, approve=True)
    assert store.case("r-1").status == "manual_review" and store.verify().ok


@pytest.mark.parametrize("reviewer", ["ALICE", "Alice", "ａｌｉｃｅ", "аlice"])
def test_a_look_alike_of_the_submitter_cannot_review(store, record, reviewer):
    record(make_request("r-1", **LARGE), actor="alice")
    with pytest.raises(IllegalTransition, match="cannot review"):
        store.review("r-1", actor=reviewer, approve=True)
    with pytest.raises(IllegalTransition, match="cannot review"):
        store.review("r-1", actor=reviewer, approve=False, reason="no")


@pytest.mark.parametrize("name", ["alice\u200b", "al\u200dice", "alice\u00ad", "\u2060bob"])
def test_a_name_with_invisible_characters_is_refused(store, record, name):
    record(make_request("r-1", **LARGE), actor="carol")
    with pytest.raises(RecordError, match=r"not a user name \(rfc 8265\)"):
        store.review("r-1", actor=name, approve=True)
    assert store.checkpoint().count == 1


def test_names_are_recorded_in_their_canonical_form(store, record):
    record(make_request("r-1", **LARGE), actor="Carol")
    store.review("r-1", actor="ＢＯＢ", approve=True)
    case = store.review("r-1", actor="Dave Smith", approve=True)
    assert [e.actor for e in case.events] == ["carol", "bob", "dave smith"]
    assert case.status == "approved" and store.verify().ok


def test_verify_refuses_a_look_alike_approval_written_around_the_api(store, record, tmp_path):
    """A second approval by `Bob` after `bob`, forged straight into the chain with correct
    hashes, is refused by verify's replay of the state machine."""
    from refundry.records.events import Draft, seal

    record(make_request("r-1", **LARGE), actor="carol")
    case = store.review("r-1", actor="bob", approve=True)
    forged = Draft("r-1", "approved", "Bob", case.decision, case.request,
                   {"verdict": "approve", "justification": "", "approval": 2,
                    "required_approvals": 2, "four_eyes_above": "500"})
    head = store.checkpoint()
    text, hash_, body = seal(forged, head.count + 1, head.head, store._clock())  # noqa: SLF001
    with store._transaction() as tx:  # noqa: SLF001 - a forger writes around the API
        tx.insert((head.count + 1, "r-1", "approved", body["at"], "Bob", text, hash_))
    result = store.verify()
    assert not result.ok and result.broken_seq == 3 and "already approved" in result.problem
