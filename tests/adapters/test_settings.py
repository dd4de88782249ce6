"""The settings file (adapters/settings.py): every key loads, flag > environment > file > default, and each mistake
is one clear line naming the key, also through `berth config check` as its users run it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.cli import build_parser
from adapters.settings import TABLES, Settings, SettingsError, declarations, render
from cas.store import StoreConfig
from registry_core.bodies import BodyLimits
from registry_core.manifests import DEFAULT_MAX_MANIFEST
from registry_core.tokens import TOKEN_LIFETIME
from tests.serving import ROOT

EXAMPLE = ROOT / "berth.example.toml"
KEYS = declarations()


def other_value(table: str, key: str, meta: dict[str, Any], kind: type, n: int = 1) -> Any:
    """A valid value unlike the default (n picks one of several), for every key."""
    default = getattr(getattr(Settings(), table), key)
    if meta["choices"]:
        return [c for c in meta["choices"] if c != default][n % (len(meta["choices"]) - 1)]
    if kind is bool:
        return not default
    if meta["check"] == "listen":
        return f"127.0.0.{n % 200 + 1}:{6000 + n}"
    if meta["check"] == "policy":
        return ("open", "mypolicy:make")[n % 2]
    if kind is str:
        return f"value-{n}"
    low = meta["low"] or 0
    return kind(max(low, 1) + n) if kind is int else float(low + 0.5 + n)


def toml(values: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, content in values.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in content.items()]
    return "\n".join(lines) + "\n"


def env_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "berth.toml"
    path.write_text(text)
    return str(path)


def test_every_key_loads_from_a_file(tmp_path: Path) -> None:
    wanted: dict[str, dict[str, Any]] = {table: {} for table in TABLES}
    for table, key, meta, kind in KEYS:
        wanted[table][key] = other_value(table, key, meta, kind)
    loaded = Settings.load(write(tmp_path, toml(wanted)))
    for table, key, _, _ in KEYS:
        assert getattr(getattr(loaded, table), key) == wanted[table][key], (table, key)
    assert loaded != Settings()
    # the rendering `berth config check` prints loads back to the same settings
    assert Settings.load(write(tmp_path, render(loaded))) == loaded
    # and what `berth serve` hands its workers through the environment, too (the metrics go their own way:
    # adapters/exposure.py)
    assert Settings.load(env=loaded.environment()) == dataclasses.replace(loaded, metrics=Settings().metrics)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, len(KEYS) - 1), given_in=st.sets(st.sampled_from(["file", "env", "flag"])))
def test_flag_beats_environment_beats_file_beats_default(tmp_path_factory: pytest.TempPathFactory, index: int,
                                                         given_in: set[str]) -> None:
    table, key, meta, kind = KEYS[index]
    given_in -= {source for source in ("env", "flag") if not meta[source]}
    values = {source: other_value(table, key, meta, kind, n) for n, source in enumerate(["file", "env", "flag"], 1)}
    if kind is bool:  # two values only: the winner differs from the default, the losers say the opposite
        values = {"file": not meta_default(table, key), "env": meta_default(table, key),
                  "flag": not meta_default(table, key)}
        for loser, winner in (("file", "env"), ("env", "flag")):
            if loser in given_in and winner in given_in:
                values[loser] = not values[winner]
    path = write(tmp_path_factory.mktemp("p"), toml({table: {key: values["file"]}})) if "file" in given_in else None
    env = {meta["env"]: env_text(values["env"])} if "env" in given_in else {}
    flags = {meta["flag"]: values["flag"]} if "flag" in given_in else {}
    expected = meta_default(table, key)
    for source in ("file", "env", "flag"):
        if source in given_in:
            expected = values[source]
    assert getattr(getattr(Settings.load(path, env, flags), table), key) == expected


def meta_default(table: str, key: str) -> Any:
    return getattr(getattr(Settings(), table), key)


def test_the_config_variable_names_the_file_and_a_flag_given_as_none_counts_as_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:7000"\n')
    assert Settings.load(env={"BERTH_CONFIG": path}).server.listen == "127.0.0.1:7000"
    assert Settings.load(path, flags={"--listen": None}).server.listen == "127.0.0.1:7000"


MISTAKES = [  # (file text, what the one line must say)
    ('[server]\nlisten = "127.0.0.1:5000"\nworkerz = 2\n', "[server] workerz: unknown key (did you mean workers?)"),
    ("[server]\nworkers = \"4\"\n", "[server] workers: expected a whole number, got '4' (str)"),
    ("[limits]\ntoken_lifetime = 5\n", "[limits] token_lifetime: must be between 60 and 86400, got 5"),
    ("[servers]\nlisten = \"127.0.0.1:5000\"\n", "unknown table [servers] (did you mean server?)"),
    ("[log]\nformat = \"xml\"\n", "[log] format: must be one of plain, json, got 'xml'"),
    ("[server]\nlisten = \"localhost\"\n", "[server] listen: HOST:PORT"),
    ("[server]\naccess_log = 1\n", "[server] access_log: expected true or false, got 1 (int)"),
    ("[store]\ngrace = -1\n", "[store] grace: must be between 0 and"),
    ("listen = \"127.0.0.1:5000\"\n", "unknown table [listen]"),
    ("[server\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "says"), MISTAKES)
def test_each_mistake_is_one_line_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        Settings.load(path)
    assert says in str(caught.value) and path in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_environment_variable_names_it() -> None:
    with pytest.raises(SettingsError, match=r"\$BERTH_WORKERS: expected a whole number, got 'many'"):
        Settings.load(env={"BERTH_WORKERS": "many"})
    with pytest.raises(SettingsError, match=r"\$BERTH_BODY_IDLE: \[limits\] body_idle: must be between"):
        Settings.load(env={"BERTH_BODY_IDLE": "0"})


def config_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "adapters.cli", "config", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)


def test_berth_config_check_as_users_run_it(tmp_path: Path) -> None:
    for text, says in MISTAKES[:4]:
        result = config_check(write(tmp_path, text), cwd=tmp_path)
        assert result.returncode == 1 and result.stdout == "", result
        assert result.stderr.startswith("berth: ") and result.stderr.count("\n") == 1 and says in result.stderr
    usage = config_check(cwd=tmp_path)
    assert usage.returncode == 2 and usage.stderr.startswith("berth: ") and "Traceback" not in usage.stderr
    good = config_check(write(tmp_path, '[store]\ndata = "/srv/berth"\n'), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    printed = tomllib.loads(good.stdout)
    assert printed["store"]["data"] == "/srv/berth" and printed["server"]["listen"] == "127.0.0.1:5000"
    assert 'data = "/srv/berth"  # file' in good.stdout and 'listen = "127.0.0.1:5000"  # default' in good.stdout


def test_the_example_file_holds_every_key_with_its_default() -> None:
    assert Settings.load(str(EXAMPLE)) == Settings()
    document = tomllib.loads(EXAMPLE.read_text())
    assert {(t, k) for t, content in document.items() for k in content} == {(t, k) for t, k, _, _ in KEYS}


def test_defaults_are_those_of_the_code_they_configure() -> None:
    limits, body = Settings().limits, BodyLimits()
    assert (limits.body_grace, limits.body_min_rate, limits.body_idle, limits.body_threads,
            limits.body_per_client) == (body.grace, body.min_rate, body.idle, body.threads, body.per_client)
    assert limits.token_lifetime == TOKEN_LIFETIME and Settings().store.max_manifest == DEFAULT_MAX_MANIFEST
    assert Settings().store.store_config() == StoreConfig()
    assert BodyLimits.from_env(Settings().environment()) == body  # the variables streaming.py reads


def test_every_flag_named_in_the_settings_is_a_flag_of_serve() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    options = {option for action in serve._actions for option in action.option_strings}
    assert {meta["flag"] for _, _, meta, _ in KEYS if meta["flag"]} <= options
    assert all(dataclasses.is_dataclass(kind) for kind in TABLES.values())


def test_admin_commands_take_the_data_directory_and_store_settings_from_the_file(tmp_path: Path) -> None:
    from registry_core.registry import Registry

    Registry.open(tmp_path / "data").close()
    good = write(tmp_path, f'[store]\ndata = "{tmp_path / "data"}"\ngrace = 60\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | {"PYTHONPATH": str(ROOT)}

    def berth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)

    listed = berth("user", "list", "--config", good)
    assert listed.returncode == 0 and "0 user(s)" in listed.stderr, listed.stderr
    assert berth("gc", "--dry-run", "--config", good).returncode == 0
    bad = berth("user", "list", "--config", write(tmp_path, "[store]\ngrace = -5\n"))
    assert bad.returncode == 1 and "[store] grace: must be between" in bad.stderr and bad.stderr.count("\n") == 1
