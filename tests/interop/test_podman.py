"""podman (as root, vfs storage): push an image to Berth and pull it back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.interop.conftest import Run
from tests.interop.images import write_layout
from tests.serving import Server


def test_podman_push_and_pull(server: Server, podman: tuple[Run, str], skopeo: Run, tmp_path: Path) -> None:
    run, storage = podman
    descriptors = write_layout(tmp_path / "img")
    config = json.loads((tmp_path / "img" / "blobs" / "sha256" / descriptors["v1"]["digest"][7:]).read_text())
    image_id = config["config"]["digest"][7:]  # podman's image ID is the config digest
    skopeo("copy", f"oci:{tmp_path / 'img'}:v1", f"{storage}localhost/berth-test/imported:v1")

    remote = f"{server.host}/syn123/podman:v1"
    digestfile = tmp_path / "digest"
    run("push", "--tls-verify=false", "--digestfile", str(digestfile), "localhost/berth-test/imported:v1", remote)
    pushed = digestfile.read_text().strip()
    assert pushed.startswith("sha256:")

    run("rmi", "-a", "-f")
    assert run("images", "-q").stdout.strip() == ""
    run("pull", "--tls-verify=false", remote)
    # The pulled image is the same image: same config (podman checks every layer against its diff_id), and the
    # registry served the manifest podman pushed, under the digest podman computed.
    listed = run("images", "--no-trunc", "--format", "{{.ID}} {{.Digest}}").stdout.split()
    assert listed == [image_id, pushed] or listed == [f"sha256:{image_id}", pushed], listed
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{remote}").stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed
