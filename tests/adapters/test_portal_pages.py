"""The portal's pages over plain HTTP (httpx) against a real `berth serve --policy project`: CSRF, the session cookie
(flags, no fixation, sign-out ends it), secrets kept out of pages, URLs and logs, the sign-in throttle, and "not
found" that does not tell hidden from missing. (The flows in a browser: tests/interop/test_portal_browser.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from adapters.portal.session import SessionCookies
from cas import BlobStore
from registry_core.accounts import Accounts
from tests.portal_world import PASSWORD, World, open_world

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    running = open_world(tmp_path_factory.mktemp("pages") / "data")
    yield running
    running.server.stop()
    running.registry.close()


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def browser(world: World) -> httpx.Client:
    return httpx.Client(base_url=world.server.url, timeout=30)


@contextmanager
def signed_in(world: World, user: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    with browser(world) as client:
        csrf = csrf_of(client.get("/signin"))
        r = client.post("/signin", data={"csrf": csrf, "user": user, "password": password, "next": "/account"})
        assert r.status_code == 303 and r.headers["location"] == "/account", r.text
        yield client


def test_a_form_without_its_csrf_token_is_refused(world: World) -> None:
    with signed_in(world, "alice") as client:
        before = len(world.accounts.tokens("alice"))
        forged = client.post("/account/tokens", data={"scope": "modify", "label": "forged"})
        assert forged.status_code == 403 and "Form refused" in forged.text
        other = csrf_of(browser(world).get("/signin"))  # a valid token, of another (anonymous) session
        assert client.post("/account/tokens", data={"scope": "modify", "csrf": other}).status_code == 403
        assert len(world.accounts.tokens("alice")) == before  # nothing was done
        csrf = csrf_of(client.get("/account"))
        assert client.post("/account/tokens", data={"scope": "modify", "csrf": csrf}).status_code == 200
        assert len(world.accounts.tokens("alice")) == before + 1
        # A sign-out is a form too: a link or image elsewhere cannot sign the reader out.
        assert client.post("/signout").status_code == 403
        assert client.get("/account").status_code == 200


def test_the_json_api_takes_the_session_with_its_csrf_header(world: World) -> None:
    with signed_in(world, "alice") as client:
        csrf = csrf_of(client.get("/account"))
        assert client.get("/api/v1/me").json()["user"] == "alice"
        body = {"scopes": ["download"], "label": "from a script"}
        assert client.post("/api/v1/tokens", json=body).status_code == 403  # the cookie alone writes nothing
        assert client.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    reader = world.accounts.create_token("alice", ["view"])[1]
    with signed_in(world, "", reader) as client:  # a session made with a token has that token's scopes
        assert client.get("/api/v1/me").json()["scopes"] == ["view"]
        csrf = csrf_of(client.get("/account"))
        refused = client.post("/account/tokens", data={"scope": "view", "csrf": csrf})
        assert refused.status_code == 403 and "modify" in refused.text
        world.accounts.revoke(reader.split("_")[1])
        assert client.get("/api/v1/me").json()["user"] is None  # revoking the token ended the session
        assert client.get("/account").status_code == 303


def test_a_new_password_signs_out_the_other_sessions(world: World) -> None:
    world.accounts.add_user("dora")
    world.accounts.set_password("dora", PASSWORD)
    with signed_in(world, "dora") as here, signed_in(world, "dora") as elsewhere:
        page = here.get("/account")
        r = here.post("/account/password", data={"csrf": csrf_of(page), "password": "a new passphrase",
                                                 "again": "a new passphrase"})
        assert r.status_code == 303
        page = here.get(r.headers["location"])
        assert "Password set" in page.text and "Account dora" in page.text  # still signed in here
        assert elsewhere.get("/account").status_code == 303  # the other session ended
        created = here.post("/account/tokens", data={"scope": "view", "csrf": csrf_of(page)})
        assert created.status_code == 200  # the page's forms carry the new session's token
    with signed_in(world, "dora", "a new passphrase"):
        pass


def test_the_session_cookie_flags_fixation_and_sign_out(world: World) -> None:
    with browser(world) as client:
        anonymous = client.get("/signin")
        # Pages are never cached (a token's secret is on one), nor framed (a click on a revoke button).
        assert anonymous.headers["cache-control"] == "no-store" and anonymous.headers["x-frame-options"] == "DENY"
        cookie = anonymous.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie and "Secure" not in cookie
        before = client.cookies["berth_session"]
        r = client.post("/signin", data={"csrf": csrf_of(anonymous), "user": "bob", "password": PASSWORD})
        assert r.status_code == 303
        after = client.cookies["berth_session"]
        assert after != before  # a new session at sign-in: a cookie planted before it stands for no one
        assert "Max-Age=28800" in r.headers["set-cookie"]
        with httpx.Client(base_url=world.server.url, cookies={"berth_session": before}) as planted:
            assert planted.get("/account").status_code == 303  # to the sign-in form
        page = client.get("/account")
        assert page.status_code == 200 and "Account bob" in page.text
        assert client.post("/signout", data={"csrf": csrf_of(page)}).status_code == 303
        # The signed-in cookie, kept by someone: the session ended on the server, so it opens nothing.
        with httpx.Client(base_url=world.server.url, cookies={"berth_session": after}) as stolen:
            assert stolen.get("/account").status_code == 303
        tampered = after[:-2] + ("AA" if not after.endswith("AA") else "BB")
        with httpx.Client(base_url=world.server.url, cookies={"berth_session": tampered}) as forged:
            assert forged.get("/account").status_code == 303


def test_the_cookie_is_secure_behind_tls(tmp_path: Path) -> None:
    with BlobStore.on_disk(tmp_path) as store:
        cookies = SessionCookies(store, Accounts(store))
        # (the request's scheme, a `--public-url https://...` in front, whether the cookie is Secure)
        for scheme, proxy, secure in (("http", False, False), ("https", False, True), ("http", True, True)):
            cookies.tls_proxy = proxy
            request = Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/signin", "headers": [],
                               "query_string": b"", "server": ("registry.test", 443)})
            response = Response()
            cookies.keep(request, response)
            assert ("Secure" in response.headers["set-cookie"]) == secure


def test_secrets_stay_out_of_pages_urls_and_logs(world: World) -> None:
    with signed_in(world, "", world.secrets["owner"]) as client:  # a token signs in too
        page = client.get("/account")
        created = client.post("/account/tokens", data={"scope": ["view", "download"], "label": "ci",
                                                       "csrf": csrf_of(page)})
        secret = re.search(r"berth_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", created.text)
        assert secret and created.request.url.query == b""  # shown in the answer to the form, not in a URL
        assert secret.group(0) not in client.get("/account").text  # once
    log = world.server.wait_for_log('"POST /account/tokens"')
    for kept in (secret.group(0), world.secrets["owner"], PASSWORD):
        assert kept not in log


def test_not_found_does_not_tell_hidden_from_missing(world: World) -> None:
    private = world.projects.create("hidden", "owner").id
    world.push_image(f"{private}/app", "v1")
    with browser(world) as anonymous, signed_in(world, "bob") as bob:
        for client in (anonymous, bob):
            hidden = client.get(f"/repositories/{private}/app")
            missing = client.get(f"/repositories/{private}/ppa")
            assert hidden.status_code == missing.status_code == 404
            assert _main(hidden.text).replace("/app", "/ppa") == _main(missing.text)
            assert client.get(f"/repositories/{private}/app/-/tags/v1").status_code == 404
            assert client.get(f"/projects/{private}").status_code == 404
            assert private not in client.get("/").text
        r = anonymous.get("/v2/nothing/here")  # the registry's own answers stay as they are under /v2/
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
        assert anonymous.get("/no/such/page").status_code == 404


def test_a_project_in_the_trash_shows_its_banner_to_its_administrators(world: World) -> None:
    project = world.projects.create("short-lived", "owner").id
    world.projects.grant(project, "public", "view")
    world.push_image(f"{project}/app", "v1")
    with signed_in(world, "owner") as owner, browser(world) as anonymous:
        page = owner.get(f"/projects/{project}")
        assert anonymous.get(f"/projects/{project}/sharing").status_code == 303  # to sign in: administrators only
        sharing = owner.get(f"/projects/{project}/sharing")
        assert sharing.status_code == 200 and 'data-key="public"' in sharing.text
        r = owner.post(f"/projects/{project}/sharing", data={"csrf": csrf_of(sharing), "principal": "public",
                                                               "level": ""})  # public no longer sees it
        assert r.status_code == 200 and 'data-key="public"' not in r.text
        assert anonymous.get(f"/projects/{project}").status_code == 404
        owner.post(f"/projects/{project}/sharing", data={"csrf": csrf_of(sharing), "principal": "public",
                                                         "level": "view"})
        assert anonymous.get(f"/projects/{project}").status_code == 200
        assert owner.post(f"/projects/{project}/trash", data={"csrf": csrf_of(page)}).status_code == 303
        page = owner.get(f"/projects/{project}")
        assert page.status_code == 200 and 'id="trash-banner"' in page.text
        assert anonymous.get(f"/projects/{project}").status_code == 404  # to others, it is gone
        repository = owner.get(f"/repositories/{project}/app")  # its repositories say where the trash is
        assert f'href="/projects/{project}">{project}</a> is in the trash' in repository.text
        assert owner.post(f"/projects/{project}/restore", data={"csrf": csrf_of(page)}).status_code == 303
        assert anonymous.get(f"/projects/{project}").status_code == 200
        assert owner.post(f"/projects/{project}/purge", data={"csrf": csrf_of(page)}).status_code == 409
        owner.post(f"/projects/{project}/trash", data={"csrf": csrf_of(page)})
        r = owner.post(f"/projects/{project}/purge", data={"csrf": csrf_of(page)})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert owner.get(f"/projects/{project}").status_code == 404 and world.projects.get(project) is None


def test_a_project_page_filters_and_pages_its_repositories(world: World) -> None:
    project = world.projects.create("paged", "owner").id
    world.projects.grant(project, "public", "view")
    for name in ("api", "cli", "web"):
        world.push_image(f"{project}/{name}", "v1")
    with browser(world) as client:
        first = client.get(f"/projects/{project}", params={"n": "2"})
        assert re.findall(r'<tr data-key="([^"]+)"', first.text) == [f"{project}/api", f"{project}/cli"]
        following = re.search(r'<a rel="next" href="([^"]+)"', first.text)
        assert following
        second = client.get(following.group(1).replace("&amp;", "&"))
        assert re.findall(r'<tr data-key="([^"]+)"', second.text) == [f"{project}/web"]
        assert 'rel="next"' not in second.text
        filtered = client.get(f"/projects/{project}", params={"filter": "LI"})  # any case
        assert re.findall(r'<tr data-key="([^"]+)"', filtered.text) == [f"{project}/cli"]
        assert client.get(f"/projects/{project}", params={"n": "0"}).status_code == 400  # a page, not a 500


def test_sign_in_goes_back_only_to_a_page_of_this_site(world: World) -> None:
    with browser(world) as client:
        for target, landing in (("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/account", "/account")):
            csrf = csrf_of(client.get("/signin"))
            r = client.post("/signin", data={"csrf": csrf, "user": "bob", "password": PASSWORD, "next": target})
            assert r.headers["location"] == landing


def test_failed_sign_ins_are_throttled(world: World) -> None:
    """Last in the module: it leaves this address throttled for password sign-ins for a minute."""
    with browser(world) as client:
        statuses = []
        for _ in range(6):
            csrf = csrf_of(client.get("/signin"))
            r = client.post("/signin", data={"csrf": csrf, "user": "alice", "password": "wrong password!"})
            statuses.append(r.status_code)
        assert statuses == [401] * 5 + [429] and int(r.headers["retry-after"]) >= 1
        assert "Too many failed sign-ins" in r.text
        csrf = csrf_of(client.get("/signin"))  # a correct token is never throttled
        r = client.post("/signin", data={"csrf": csrf, "user": "", "password": world.secrets["alice"]})
        assert r.status_code == 303


def _main(page: str) -> str:
    return page[page.index("<main>"):page.index("</main>")]
