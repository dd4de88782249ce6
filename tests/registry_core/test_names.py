from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import Digest
from registry_core import names
from registry_core.names import (
    NAME_MAX,
    TAG_MAX,
    InvalidName,
    InvalidReference,
    RepositoryName,
    _parse_name,
    parse_project_id,
    parse_reference,
    parse_tag,
)


@pytest.mark.parametrize("text", ["syn1/a", "syn12345/my-repo", "syn1/a/b/c", "syn1/a.b_c__d---e", "syn0/x9"])
def test_names_inside_a_project(text: str) -> None:
    name = RepositoryName.parse(text)
    assert str(name) == text and name.project == text.split("/")[0] and name.path == text.split("/", 1)[1]


@pytest.mark.parametrize("text", ["app", "myorg/app", "syn1", "syn/a", "synx/a", "project/a", "a/b/c/d", "x.y/z"])
def test_valid_names_outside_any_project(text: str) -> None:
    name = RepositoryName.parse(text)  # the OCI grammar alone: the project rule is the project policy's
    assert str(name) == text and name.project is None and name.path == text


@pytest.mark.parametrize("text", [
    "", "syn1/", "/syn1/a", "syn1//a", "Syn1/a", "syn1/A", "syn1/a_", "syn1/-a", "syn1/a..b", "syn1/a___b",
    "syn1/a/", "syn1/" + "a" * 251, "syn1/a b", "syn1/a\n", "syn1/ä", "-a", "a_", "UPPER",
])
def test_invalid_names(text: str) -> None:
    with pytest.raises(InvalidName):
        RepositoryName.parse(text)


def test_project_ids() -> None:
    assert parse_project_id("syn123") == "syn123"
    for text in ("syn", "syn1/a", "SYN1", "syn" + "1" * 19, "x"):
        with pytest.raises(InvalidName):
            parse_project_id(text)


def test_longest_name() -> None:
    assert RepositoryName.parse("syn1/" + "a" * 250)


@pytest.mark.parametrize("text", ["latest", "v1.0", "_x", "A" * 128, "1-2_3.4"])
def test_valid_tags(text: str) -> None:
    assert parse_tag(text) == text


@pytest.mark.parametrize("text", ["", ".x", "-x", "a" * 129, "a/b", "a:b", "a b", "ä"])
def test_invalid_tags(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_tag(text)


def test_references() -> None:
    digest = Digest.of(b"x")
    assert parse_reference(str(digest)) == digest
    assert parse_reference("v1") == "v1"
    with pytest.raises(InvalidReference):
        parse_reference("sha256:short")


class Counting:
    """A compiled pattern that records the length of every text it is asked to match: proof that an input reached
    the regular expression (an input over the length cap is refused before it, and times nothing)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.lengths = pattern, list[int]()

    def fullmatch(self, text: str) -> re.Match[str] | None:
        self.lengths.append(len(text))
        return self.pattern.fullmatch(text)


# Just under the caps, each built to make a backtracking engine work hardest: long runs of separators, alternatives
# that overlap (`_` and `__`, `-+`), and the one bad character last, so that every component is matched in full.
HOSTILE_NAMES = [("syn1/" + "a-" * 125)[:NAME_MAX - 1] + "!", ("syn1/" + "a_" * 125)[:NAME_MAX - 1] + "!",
                 "a" + "-" * (NAME_MAX - 3) + "!", ("a." * 127)[:NAME_MAX - 1] + ".",
                 ("a/" * 127)[:NAME_MAX - 1] + "/", ("a" + "__" * 126)[:NAME_MAX - 1] + "_",
                 ("a" + "_-" * 126)[:NAME_MAX - 1] + "!", "a" + "." * (NAME_MAX - 2) + "a"]
HOSTILE_TAGS = ["a" + "." * (TAG_MAX - 2) + "!", "_" * (TAG_MAX - 1) + "!", "a" + "-" * (TAG_MAX - 2) + "!"]


def test_hostile_names_reach_the_pattern_and_are_rejected_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(NAME_MAX - 2 <= len(text) <= NAME_MAX for text in HOSTILE_NAMES)
    counting = Counting(names._COMPONENT)
    monkeypatch.setattr(names, "_COMPONENT", counting)
    for text in HOSTILE_NAMES:
        counting.lengths.clear()
        _parse_name.cache_clear()
        with pytest.raises(InvalidName):
            RepositoryName.parse(text)
        # every component went through the pattern, the bad character last: the whole input was matched
        assert sum(counting.lengths) == len(text) - text.count("/"), text
    started = time.thread_time()  # CPU time: other work on the machine does not count
    for _ in range(200):
        for text in HOSTILE_NAMES:
            _parse_name.cache_clear()
            with pytest.raises(InvalidName):
                RepositoryName.parse(text)
    assert time.thread_time() - started < 1.0  # 1 600 parses near the cap; linear matching takes ~0.05 s


def test_hostile_tags_reach_the_pattern_and_are_rejected_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(len(text) == TAG_MAX for text in HOSTILE_TAGS)
    counting = Counting(names._TAG)
    monkeypatch.setattr(names, "_TAG", counting)
    for text in HOSTILE_TAGS:
        counting.lengths.clear()
        with pytest.raises(InvalidReference):
            parse_tag(text)
        assert counting.lengths == [len(text)]
    started = time.thread_time()  # CPU time: other work on the machine does not count
    for _ in range(1000):
        for text in HOSTILE_TAGS:
            with pytest.raises(InvalidReference):
                parse_tag(text)
    assert time.thread_time() - started < 1.0


def test_inputs_over_the_cap_never_reach_the_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(names._COMPONENT)
    monkeypatch.setattr(names, "_COMPONENT", counting)
    for text in ["a" * (NAME_MAX + 1), "a-" * 10**5 + "!"]:
        with pytest.raises(InvalidName):
            RepositoryName.parse(text)
    assert counting.lengths == []


@given(st.text(alphabet="syn0123456789abz._-/A", max_size=300))
def test_parse_either_round_trips_or_refuses(text: str) -> None:
    try:
        name = RepositoryName.parse(text)
    except InvalidName:
        return
    assert str(name) == text
