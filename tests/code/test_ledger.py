"""The lineage ledger's hash chain (senti.ledger) on a real DVC project and its default remote
(a directory): what the chain itself proves, and what it leaves to the registry cross-check
of senti.lineage.verify_ledger (tests/integration/test_lineage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc.repo import Repo

from senti import ledger, versioning
from senti.io import sha256_bytes


def dvc_project(root: Path, remote: str | None) -> Path:
    """A DVC project (no git) in ``root``, its default remote ``remote`` (relative to it)."""
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    if remote is not None:
        (root / ".dvc" / "config").write_text(
            "[core]\n    no_scm = true\n    remote = store\n"
            f"['remote \"store\"']\n    url = ../{remote}\n")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A DVC project whose default remote is the directory ``remote`` beside it."""
    return dvc_project(tmp_path_factory.mktemp("ledger") / "project", "../remote")


def entries(project: Path, name: str, count: int) -> tuple[Path, list[bytes]]:
    """A ledger of ``count`` entries appended one by one; its file and its lines."""
    for n in range(1, count + 1):
        ledger.append(project, name, {"kind": "decision", "version": str(n), "reason": "好"})
    path = project.parent / "remote" / name
    return path, path.read_bytes().splitlines()


def test_entries_chain_and_live_beside_dvc_objects(project):
    path, lines = entries(project, "senti-ledger/chain.jsonl", 3)
    assert path.parent.name == ledger.LEDGER_DIR  # in the remote, outside files/md5
    book = ledger.read(project, "senti-ledger/chain.jsonl")
    assert book is not None and book.breaks == [] and book.where == str(path)
    assert [e.seq for e in book.entries] == [1, 2, 3]
    assert book.entries[0].prev == ledger.GENESIS
    assert [e.prev for e in book.entries[1:]] == [e.sha256 for e in book.entries[:-1]]
    assert book.head.sha256 == sha256_bytes(lines[-1])
    assert book.entries[2].facts == {"kind": "decision", "version": "3", "reason": "好"}
    assert json.loads(lines[0])["reason"] == "好"  # UTF-8, not escaped
    assert ledger.read(project, "senti-ledger/none-yet.jsonl") is None


@pytest.mark.parametrize("change", ["edit", "delete", "garble"])
def test_changing_or_removing_a_past_entry_breaks_the_chain(project, change):
    name = f"senti-ledger/{change}.jsonl"
    path, lines = entries(project, name, 4)
    if change == "edit":  # entry 2 says something else, still well-formed
        lines[1] = lines[1].replace(b'"version":"2"', b'"version":"9"')
    elif change == "delete":
        del lines[1]
    else:
        lines[1] = lines[1][:-1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    book = ledger.read(project, name)
    first = book.breaks[0]
    # an edited entry's successor no longer links to it; an entry moved up has the wrong seq
    assert first.line == {"edit": 3, "delete": 2, "garble": 2}[change]
    if change == "garble":
        assert first.found == "no ledger entry"
    else:
        assert first.expected.startswith("seq ") and first.found != first.expected


def test_removing_the_last_entry_leaves_an_intact_chain(project):
    """Why the chain alone is not enough: senti.lineage.verify_ledger compares it with the
    registry (every version and decision needs its entry) and with a head kept elsewhere."""
    path, lines = entries(project, "senti-ledger/truncated.jsonl", 3)
    head = sha256_bytes(lines[-1])
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    book = ledger.read(project, "senti-ledger/truncated.jsonl")
    assert book.breaks == [] and len(book.entries) == 2
    assert head not in {e.sha256 for e in book.entries}
    appended = ledger.append(project, "senti-ledger/truncated.jsonl", {"kind": "decision"})
    assert appended.seq == 3 and appended.prev == book.head.sha256


def test_chain_keys_are_not_facts():
    with pytest.raises(ValueError, match="prev"):
        ledger.encode(1, ledger.GENESIS, {"prev": "x"})


def test_no_remote_no_ledger(tmp_path, project):
    with pytest.raises(versioning.NoRemote, match="no DVC repository"):
        ledger.read(tmp_path, "senti-ledger/x.jsonl")
    bare = dvc_project(tmp_path / "bare", None)
    with pytest.raises(versioning.NoRemote, match="no default DVC remote"):
        ledger.append(bare, "senti-ledger/x.jsonl", {"kind": "decision"})
    assert not any((bare.parent).glob("**/senti-ledger"))
