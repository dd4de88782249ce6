"""The portal in a real browser: Debian's Chromium (/usr/bin/chromium), driven by Playwright's Python package, against
a real `berth serve --policy project` with images pushed through the registry API.

Playwright never downloads a browser here: it launches the system's Chromium (`executable_path`), which scripts/test
installs from Debian with the other clients (scripts/clients.sh). One browser for the module, a context per test.
Set BERTH_SCREENSHOTS=DIR to keep screenshots of the main pages (the README's come from there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from registry_core.names import RepositoryName
from tests.interop.conftest import Run
from tests.portal_world import PASSWORD, World, open_world

CHROMIUM = "/usr/bin/chromium"
# As root and on a machine without a network: no sandbox (root), no GPU, and none of Chromium's own background
# connections (they are refused here, many at a time).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    running = open_world(tmp_path_factory.mktemp("portal") / "data")
    yield running
    running.server.stop()
    running.registry.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM), "no chromium: run the suite through scripts/test (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, world: World) -> Iterator[Page]:
    context = browser.new_context(base_url=world.server.url, viewport={"width": 1100, "height": 720})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.server.url)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def sign_in(page: Page, user: str, password: str) -> None:
    page.goto("/signin")
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("form[action='/signin'] button[type=submit]")
    expect(page.locator("header.site")).to_contain_text("Sign out")


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("BERTH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def anonymous_pull(world: World, repo: str, tag: str) -> int:
    """The status of an anonymous manifest GET, with the token an anonymous client gets for it."""
    r = httpx.get(f"{world.server.url}/token", params={"service": "berth", "scope": f"repository:{repo}:pull"})
    token = r.json()["token"]
    return httpx.get(f"{world.server.url}/v2/{repo}/manifests/{tag}", headers={
        "Authorization": f"Bearer {token}", "Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code


def test_password_sign_in_then_project_repository_tag_shows_the_pushed_digest(world: World, page: Page,
                                                                              skopeo: Run) -> None:
    repo = f"{world.project}/app"
    digest = world.push_image(repo, "v1", labels={"org.opencontainers.image.title": "hello"})
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"owner:{world.secrets['owner']}",
                                  f"docker://{world.server.host}/{repo}:v1").stdout)
    assert inspected["Digest"] == digest

    sign_in(page, "owner", PASSWORD)
    screenshot(page, "projects")
    page.click(f"a[href='/projects/{world.project}']")
    page.click(f"a[href='/repositories/{repo}']")
    row = page.locator("#tags tr[data-key='v1']")
    expect(row.locator("code.digest")).to_have_attribute("title", digest)  # short on the page, full on hover
    expect(row.locator("code.digest")).to_have_text(digest[:len("sha256:") + 12])
    expect(page.locator("#pull-commands")).to_contain_text(f"docker pull {world.server.host}/{repo}@{digest}")
    screenshot(page, "repository")

    row.locator("code.digest + button.copy").click()  # the copy button the script added
    expect(row.locator("button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == digest

    page.click(f"#tags a[href='/repositories/{repo}/-/tags/v1']")
    expect(page.locator("#digest")).to_have_text(digest)
    expect(page.locator("#layers")).to_contain_text("COPY hello.txt /hello.txt")  # the history line of the layer
    expect(page.locator("#config")).to_contain_text("org.opencontainers.image.title")
    screenshot(page, "tag")

    again = world.push_image(repo, "v1", step="COPY goodbye.txt /goodbye.txt")  # the tag moves
    page.reload()
    expect(page.locator("#digest")).to_have_text(again)
    history = page.locator("#history tbody tr")
    expect(history).to_have_count(2)
    expect(history.nth(0)).to_contain_text("(current)")
    assert history.nth(0).locator("a").get_attribute("title") == again
    assert history.nth(1).locator("a").get_attribute("title") == digest


def test_token_sign_in_creates_a_token_that_pushes_then_revokes_it(world: World, page: Page) -> None:
    world.projects.grant(world.project, "alice", "edit")
    sign_in(page, "", world.secrets["alice"])  # a token needs no user name
    page.goto("/account")
    page.check("input[name=scope][value=modify]")
    page.fill("input[name=label]", "laptop")
    page.click("form[action='/account/tokens'] button[type=submit]")
    line = page.locator("#new-token code[data-copy-label='docker login command']").inner_text()
    match = re.fullmatch(rf"docker login -u alice -p (berth_\S+) {re.escape(world.server.host)}", line)
    assert match, line
    screenshot(page, "account")
    world.secrets["alice-laptop"] = match.group(1)
    digest = world.push_image(f"{world.project}/from-laptop", "v1", who="alice-laptop")
    assert digest.startswith("sha256:")

    page.goto("/account")  # the secret is shown once: not on the page any more
    assert match.group(1) not in page.content()
    row = page.locator("#tokens tr", has_text="laptop")
    expect(row).not_to_contain_text("never")  # used by the push: its last use is shown (expires in 30 days)
    row.locator("button", has_text="Revoke").click()
    expect(page.locator("#tokens tr", has_text="laptop")).to_contain_text("revoked")
    r = httpx.get(f"{world.server.url}/token", auth=("alice", match.group(1)))
    assert r.status_code == 401 and "revoked" in r.text


def test_an_index_shows_its_platforms_with_a_link_to_each(world: World, page: Page) -> None:
    repo = f"{world.project}/multi"
    digest, children = world.push_index(repo, "latest", ("amd64", "arm64"))
    page.goto(f"/repositories/{repo}")  # anonymous: public may view the project
    expect(page.locator("#tags tr[data-key='latest']")).to_contain_text("linux/amd64, linux/arm64")
    page.click(f"#tags a[href='/repositories/{repo}/-/tags/latest']")
    expect(page.locator("#digest")).to_have_text(digest)
    rows = page.locator("#children tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("linux/arm64")
    rows.nth(1).locator("a").click()
    expect(page.locator("#digest")).to_have_text(children[1])
    expect(page.locator("#config")).to_contain_text("linux/arm64")


def test_tags_sort_filter_and_page(world: World, page: Page) -> None:
    repo = f"{world.project}/many"
    for n in range(1, 6):
        world.push_image(repo, f"t{n}")
    page.goto(f"/repositories/{repo}?n=2")
    tags = page.locator("#tags tbody tr")
    expect(tags).to_have_count(2)
    assert [tags.nth(i).get_attribute("data-key") for i in range(2)] == ["t1", "t2"]
    page.click("a[rel=next]")
    assert [tags.nth(i).get_attribute("data-key") for i in range(2)] == ["t3", "t4"]
    page.click("a[rel=next]")
    expect(tags).to_have_count(1)
    expect(page.locator("a[rel=next]")).to_have_count(0)

    page.goto(f"/repositories/{repo}")
    page.select_option("select[name=sort]", "time")
    page.click("form[role=search] button[type=submit]")
    assert tags.nth(0).get_attribute("data-key") == "t5"  # newest push first

    page.fill("input[data-filter=tags]", "t3")  # filtered as you type, before any request
    expect(page.locator("#tags tbody tr:visible")).to_have_count(1)
    page.press("input[data-filter=tags]", "Enter")  # and by the server, over every page
    expect(page).to_have_url(re.compile(r"filter=t3"))
    expect(tags).to_have_count(1)


def test_a_grant_changed_on_the_sharing_page_applies_to_pulls_at_once(world: World, page: Page) -> None:
    private = world.projects.create("private", "owner").id
    repo = f"{private}/secret"
    world.push_image(repo, "v1")
    assert anonymous_pull(world, repo, "v1") == 401
    page.goto(f"/repositories/{repo}")  # hidden: the same page as for a repository that does not exist
    hidden = page.locator("main").inner_text()
    page.goto(f"/repositories/{private}/nothing-here")
    assert page.locator("main").inner_text() == hidden.replace("secret", "nothing-here")

    sign_in(page, "owner", PASSWORD)
    page.goto(f"/repositories/{repo}")
    page.click("a:text('Sharing settings')")
    page.fill("input[name=principal]", "public")
    page.select_option("form.row select[name=level]", "download")
    page.click("form.row button[type=submit]")
    expect(page.locator("#grants")).to_contain_text("public")
    screenshot(page, "sharing")
    assert anonymous_pull(world, repo, "v1") == 200
    page.locator("#grants tr[data-key=public] button", has_text="Remove").click()
    expect(page.locator("#grants tr[data-key=public]")).to_have_count(0)
    assert anonymous_pull(world, repo, "v1") == 401


def test_trash_banner_and_restore(world: World, page: Page) -> None:
    repo = f"{world.project}/to-trash"
    world.push_image(repo, "v1")
    assert anonymous_pull(world, repo, "v1") == 401  # public may view the project, not pull
    world.projects.grant(repo, "public", "download")
    assert anonymous_pull(world, repo, "v1") == 200
    sign_in(page, "owner", PASSWORD)
    page.goto(f"/repositories/{repo}")
    page.click("button:text('Move the repository to the trash')")
    expect(page.locator("#trash-banner")).to_contain_text("in the trash")
    assert anonymous_pull(world, repo, "v1") != 200  # refused at once
    page.click("#trash-banner button:text('Restore')")
    expect(page.locator("#trash-banner")).to_have_count(0)
    assert anonymous_pull(world, repo, "v1") == 200

    page.click("button[aria-label='Delete tag v1']")  # those who may delete, delete tags
    expect(page.locator("#tags tr[data-key='v1']")).to_have_count(0)
    assert anonymous_pull(world, repo, "v1") == 404
    world.push_image(repo, "v2")
    page.reload()
    page.click("button:text('Move the repository to the trash')")
    page.click("#trash-banner button:text('Purge for good')")
    expect(page).to_have_url(re.compile(rf"/projects/{world.project}$"))
    expect(page.locator(f"#repositories tr[data-key='{repo}']")).to_have_count(0)
    assert not world.registry.exists(RepositoryName.parse(repo))


def test_a_site_admin_creates_an_account_that_signs_in_then_disables_it(world: World, browser: Browser) -> None:
    admin, carol = (browser.new_context(base_url=world.server.url) for _ in range(2))
    try:
        by_admin, by_carol = admin.new_page(), carol.new_page()
        sign_in(by_admin, "admin", PASSWORD)
        by_admin.click("header.site a:text('Administration')")
        form = by_admin.locator("form[action='/admin/accounts']")
        form.locator("input[name=name]").fill("carol")
        form.locator("input[name=certified]").check()
        form.locator("input[name=password]").fill("carol's own passphrase")
        form.locator("button[type=submit]").click()
        expect(by_admin.locator("#accounts tr[data-key=carol]")).to_contain_text("yes")  # certified

        sign_in(by_carol, "carol", "carol's own passphrase")
        by_carol.goto("/")
        by_carol.fill("form[action='/projects'] input[name=name]", "carols")
        by_carol.click("form[action='/projects'] button[type=submit]")
        expect(by_carol.locator("h1")).to_contain_text("carols")  # her new project's page: she owns it

        by_admin.locator("#accounts tr[data-key=carol] button:text('Disable')").click()
        expect(by_admin.locator("#accounts tr[data-key=carol]")).to_contain_text("disabled")
        by_carol.goto("/account")  # her session ended with the account
        expect(by_carol).to_have_url(re.compile(r"/signin\?next=/account"))
    finally:
        admin.close()
        carol.close()


def test_the_pages_work_without_javascript(world: World, browser: Browser) -> None:
    repo = f"{world.project}/plain"
    digest = world.push_image(repo, "v1")
    world.push_image(repo, "v2")
    context = browser.new_context(base_url=world.server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, "bob", PASSWORD)
        page.goto(f"/repositories/{repo}")
        expect(page.locator("button.copy")).to_have_count(0)  # the script adds them; the text is there to select
        expect(page.locator("#tags tr[data-key='v1'] code.digest")).to_have_attribute("title", digest)
        page.fill("input[name=filter]", "v2")
        page.click("form[role=search] button[type=submit]")
        expect(page.locator("#tags tbody tr")).to_have_count(1)
        page.goto("/account")
        page.click("form[action='/account/tokens'] button[type=submit]")
        expect(page.locator("#new-token")).to_contain_text("docker login -u bob -p berth_")
        page.click("header.site button:text('Sign out')")
        expect(page.locator("header.site")).to_contain_text("Sign in")
    finally:
        context.close()
