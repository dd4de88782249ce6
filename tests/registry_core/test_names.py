from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import Digest
from registry_core.names import (
    NAME_MAX,
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


def test_hostile_names_are_rejected_fast() -> None:
    """Inputs just under NAME_MAX reach the regular expressions (longer ones are cut off before them)."""
    near = [("syn1/" + "a-" * 125)[:NAME_MAX - 1] + "!", ("syn1/" + "a_" * 125)[:NAME_MAX - 1] + "!",
            ("a" + "-" * (NAME_MAX - 3) + "!"), ("a." * 127)[:NAME_MAX - 1] + ".", ("a/" * 127)[:NAME_MAX - 1] + "/",
            ("a" + "__" * 126)[:NAME_MAX]]
    assert all(len(text) <= NAME_MAX for text in near)
    started = time.perf_counter()
    for _ in range(200):
        for text in near + ["a" * 10**6]:
            _parse_name.cache_clear()
            with pytest.raises(InvalidName):
                RepositoryName.parse(text)
    assert time.perf_counter() - started < 1.0


@given(st.text(alphabet="syn0123456789abz._-/A", max_size=300))
def test_parse_either_round_trips_or_refuses(text: str) -> None:
    try:
        name = RepositoryName.parse(text)
    except InvalidName:
        return
    assert str(name) == text
