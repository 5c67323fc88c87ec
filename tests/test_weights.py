"""``fmeval weights``: downloads against a local HTTP server, verified and atomic.

The server (stdlib ``http.server`` on 127.0.0.1, started per test) serves
generated files and misbehaves on request: truncated bodies, wrong content,
404s, dropped connections, HTML pages, wrong server digests. Every failure
must be one ``WeightsError`` line, and the weights cache must never show a
half-written asset under its final name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fmeval.adapters import create_adapter
from fmeval.errors import ModelError, WeightsError
from fmeval.registry import Registry
from fmeval.weights import download as dl
from fmeval.weights.registry import ASSETS, MIRROR_ENV, Asset, AssetFile
from fmeval.weights.store import MANIFEST, WeightStore, resolve_weights
from helpers import make_zip

GOOD = bytes(range(256)) * 4096  # 1 MiB, spans several read chunks
OTHER = bytes(reversed(GOOD))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- #
# A misbehaving HTTP server
# --------------------------------------------------------------------------- #
@dataclass
class Route:
    body: bytes
    mode: str = "ok"  # ok | drop | drop_once | 503_once | norange | html | 404
    drop_at: int = len(GOOD) // 3
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    served: int = 0  # requests answered so far


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        route: Route | None = srv.routes.get(self.path)
        srv.log.append((self.path, self.headers.get("Range")))
        if route is None or route.mode == "404":
            self.send_error(404, "Not Found")
            return
        route.served += 1
        if route.mode == "503_once" and route.served == 1:
            self.send_error(503, "Busy")
            return
        body, start = route.body, 0
        etag = route.headers.get("ETag", f'"{sha(body)[:16]}"')
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if m and route.mode != "norange" and (if_range is None or if_range == etag):
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        ctype = "text/html; charset=utf-8" if route.mode == "html" else "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        if "ETag" not in route.headers:
            self.send_header("ETag", etag)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        for k, v in route.headers.items():
            self.send_header(k, v)
        self.end_headers()
        payload = body[start:]
        drop = route.mode == "drop" or (route.mode == "drop_once" and route.served == 1)
        if drop:
            payload = payload[: max(route.drop_at - start, 0)]
        for i in range(0, len(payload), 1 << 16):
            if route.delay_s:
                time.sleep(route.delay_s)
            self.wfile.write(payload[i: i + (1 << 16)])
        srv.bytes_sent[self.path] = srv.bytes_sent.get(self.path, 0) + len(payload)
        if drop:
            self.wfile.flush()
            self.close_connection = True


class Server:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.log, self.httpd.bytes_sent = {}, [], {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, route: Route) -> str:
        self.httpd.routes[path] = route
        return self.base + path

    @property
    def log(self) -> list[tuple[str, str | None]]:
        return self.httpd.log

    def sent(self, path: str) -> int:
        return self.httpd.bytes_sent.get(path, 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(dl, "TIMEOUT_S", 10.0)
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")


def one_file_store(tmp_path, server, route: Route, *, sha256: str | None = None,
                   size: int | None = None, name: str = "asset") -> WeightStore:
    url = server.add(f"/{name}/model.pth", route)
    reg: Registry[Asset] = Registry("weights asset", WeightsError)
    reg.add(name, Asset(name, "test asset", (AssetFile("model.pth", url, sha256, size),),
                        entry="model.pth"))
    return WeightStore(tmp_path / "weights", reg)


def interrupted_store(tmp_path, server) -> tuple[Route, WeightStore]:
    """A store whose one download dropped mid-way (every automatic retry too): (its route, the store).
    Setting ``route.mode`` then decides how the server answers the next fetch."""
    route = Route(GOOD, mode="drop")
    store = one_file_store(tmp_path, server, route, sha256=sha(GOOD), size=len(GOOD))
    with pytest.raises(dl.DownloadInterrupted):
        store.fetch("asset")
    return route, store


def assert_no_half_written(store: WeightStore, name: str = "asset", *, partial_kept: bool = False):
    """The asset's name is absent; only hidden bookkeeping folders exist."""
    assert not (store.root / name).exists()
    visible = [p.name for p in store.root.iterdir() if not p.name.startswith(".")] \
        if store.root.exists() else []
    assert visible == []
    staging = store.root / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    parts = list((store.root / ".partial").rglob("*.part")) if store.root.exists() else []
    assert bool(parts) == partial_kept, parts


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    assert err.value.__cause__ is None
    return msg


# --------------------------------------------------------------------------- #
# Good downloads
# --------------------------------------------------------------------------- #
def test_good_file_is_verified_and_installed(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD), sha256=sha(GOOD), size=len(GOOD))
    res = store.fetch("asset")
    assert res.downloaded and res.entry == store.root / "asset" / "model.pth"
    assert res.entry.read_bytes() == GOOD
    manifest = json.loads((store.root / "asset" / MANIFEST).read_text())
    assert manifest["files"][0]["sha256"] == sha(GOOD) and manifest["files"][0]["pinned"]
    assert store.status("asset").state == "present"
    assert store.status("asset", verify=True).state == "verified"
    assert not (store.root / ".partial" / "asset").exists()
    # present: a second fetch makes no request, --force downloads again
    n = len(server.log)
    assert not store.fetch("asset").downloaded and len(server.log) == n
    assert store.fetch("asset", force=True).downloaded and len(server.log) == n + 1


def zip_store(tmp_path, server, archive: bytes, vocab: bytes = b"[PAD]\n[UNK]\n",
              name: str = "bundle") -> WeightStore:
    reg: Registry[Asset] = Registry("weights asset", WeightsError)
    zip_url = server.add(f"/{name}/release.zip", Route(archive))
    vocab_url = server.add(f"/{name}/vocab.txt", Route(vocab))
    reg.add(name, Asset(name, "zip + vocab", (
        AssetFile("release.zip", zip_url, sha(archive), len(archive), unpack=True),
        AssetFile("vocab.txt", vocab_url),
    ), required=("pytorch_model.bin", "vocab.txt")))
    return WeightStore(tmp_path / "weights", reg)


def test_zip_is_unpacked_with_its_top_folder_dropped(tmp_path, server):
    archive = make_zip({"release/pytorch_model.bin": GOOD, "release/config.json": b"{}",
                    "__MACOSX/release/._pytorch_model.bin": b"junk"})
    store = zip_store(tmp_path, server, archive)
    res = store.fetch("bundle")
    folder = store.root / "bundle"
    assert res.entry == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", MANIFEST, "pytorch_model.bin", "vocab.txt"]
    assert (folder / "pytorch_model.bin").read_bytes() == GOOD
    assert not (folder / "release.zip").exists()  # the archive is not kept
    contents = json.loads((folder / MANIFEST).read_text())["contents"]
    assert contents["pytorch_model.bin"]["sha256"] == sha(GOOD)
    assert store.status("bundle", verify=True).state == "verified"


def test_zip_without_required_files_fails_and_leaves_nothing(tmp_path, server):
    store = zip_store(tmp_path, server, make_zip({"weights.pt": GOOD}))
    with pytest.raises(WeightsError, match="does not contain pytorch_model.bin") as err:
        store.fetch("bundle")
    one_line(err)
    assert_no_half_written(store, "bundle")


def test_zip_slip_is_refused(tmp_path, server):
    store = zip_store(tmp_path, server, make_zip({"../evil.txt": b"x", "pytorch_model.bin": GOOD}))
    with pytest.raises(WeightsError, match="unsafe path") as err:
        store.fetch("bundle")
    one_line(err)
    assert_no_half_written(store, "bundle")
    assert not (tmp_path / "evil.txt").exists() and not (store.root / "evil.txt").exists()


def test_corrupt_zip_fails_cleanly(tmp_path, server):
    store = zip_store(tmp_path, server, b"PK\x03\x04 this is not really a zip")
    with pytest.raises(WeightsError, match="not a readable zip") as err:
        store.fetch("bundle")
    one_line(err)
    assert_no_half_written(store, "bundle")


# --------------------------------------------------------------------------- #
# Failures: one line, nothing half-written
# --------------------------------------------------------------------------- #
def test_truncated_file_fails_on_size(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD[: len(GOOD) // 2]),
                           sha256=sha(GOOD), size=len(GOOD))
    with pytest.raises(WeightsError, match=r"got 524288 bytes, expected 1048576") as err:
        store.fetch("asset")
    assert "deleted" in one_line(err)
    assert_no_half_written(store)


def test_wrong_checksum_fails(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(OTHER), sha256=sha(GOOD), size=len(GOOD))
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as err:
        store.fetch("asset")
    msg = one_line(err)
    assert sha(GOOD)[:16] in msg and sha(OTHER)[:16] in msg
    assert_no_half_written(store)


def test_404_fails(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD, mode="404"))
    with pytest.raises(WeightsError, match="HTTP 404") as err:
        store.fetch("asset")
    assert one_line(err).startswith("asset: model.pth: HTTP 404 Not Found from http://127.0.0.1:")
    assert_no_half_written(store)


def test_dropped_connection_keeps_only_a_hidden_partial(tmp_path, server):
    route = Route(GOOD, mode="drop")
    store = one_file_store(tmp_path, server, route, sha256=sha(GOOD), size=len(GOOD))
    with pytest.raises(dl.DownloadInterrupted, match="run the same command again to resume") as err:
        store.fetch("asset")
    one_line(err)
    assert route.served == 1 + dl.RETRIES  # automatic retries, each resuming
    assert_no_half_written(store, partial_kept=True)
    (part,) = (store.root / ".partial").rglob("*.part")
    assert part.read_bytes() == GOOD[: route.drop_at]


def test_next_fetch_resumes_a_partial_download(tmp_path, server):
    route, store = interrupted_store(tmp_path, server)
    route.mode = "ok"
    sent_before = server.sent("/asset/model.pth")
    res = store.fetch("asset")
    assert res.entry.read_bytes() == GOOD
    assert server.log[-1] == ("/asset/model.pth", f"bytes={route.drop_at}-")
    assert server.sent("/asset/model.pth") - sent_before == len(GOOD) - route.drop_at
    assert not list((store.root / ".partial").rglob("*.part"))


def test_a_dropped_connection_is_resumed_automatically(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD, mode="drop_once"),
                           sha256=sha(GOOD), size=len(GOOD))
    assert store.fetch("asset").entry.read_bytes() == GOOD
    ranges = [r for p, r in server.log if p == "/asset/model.pth"]
    assert ranges == [None, f"bytes={len(GOOD) // 3}-"]
    assert server.sent("/asset/model.pth") == len(GOOD)  # no byte fetched twice


def test_a_busy_server_is_retried(tmp_path, server):
    route = Route(GOOD, mode="503_once")
    store = one_file_store(tmp_path, server, route, sha256=sha(GOOD))
    assert store.fetch("asset").entry.read_bytes() == GOOD and route.served == 2


def test_unwritable_weights_cache_is_one_line(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    store = WeightStore(blocked, store.assets)
    with pytest.raises(WeightsError, match="cannot write the weights cache") as err:
        store.fetch("asset")
    one_line(err)


def test_server_that_ignores_range_restarts_from_zero(tmp_path, server):
    route, store = interrupted_store(tmp_path, server)
    route.mode = "norange"
    assert store.fetch("asset").entry.read_bytes() == GOOD  # not partial + whole file


def test_changed_upstream_file_is_not_spliced(tmp_path, server):
    """If-Range: a partial of the old file is dropped when the server's file changed."""
    route = Route(OTHER, mode="drop")
    store = one_file_store(tmp_path, server, route, size=len(GOOD))
    with pytest.raises(dl.DownloadInterrupted):
        store.fetch("asset")
    route.body, route.mode = GOOD, "ok"  # new ETag: the server answers 200 with the new file
    assert store.fetch("asset").entry.read_bytes() == GOOD


def test_server_md5_is_checked(tmp_path, server):
    good_md5 = base64.b64encode(hashlib.md5(GOOD).digest()).decode()
    bad_md5 = base64.b64encode(hashlib.md5(OTHER).digest()).decode()
    store = one_file_store(tmp_path, server, Route(GOOD, headers={
        "x-goog-hash": f"crc32c=AAAAAA==,md5={good_md5}"}))
    res = store.fetch("asset")
    assert res.files[0]["checked"] == ["md5 (x-goog-hash)"] and not res.files[0]["pinned"]

    store = one_file_store(tmp_path / "b", server, Route(GOOD, headers={
        "x-goog-hash": f"crc32c=AAAAAA==,md5={bad_md5}"}), name="bad")
    with pytest.raises(WeightsError, match="does not match the server's x-goog-hash") as err:
        store.fetch("bad")
    one_line(err)
    assert_no_half_written(store, "bad")


def test_git_blob_etag_of_a_pinned_hub_revision_is_checked(tmp_path, server):
    blob = hashlib.sha1(b"blob %d\0" % len(GOOD) + GOOD).hexdigest()
    hub = {"ETag": f'"{blob}"', "X-Repo-Commit": "0" * 40}
    assert dl.server_digests({"ETag": f'"{blob}"'}) == {}  # an ETag alone proves nothing
    store = one_file_store(tmp_path, server, Route(GOOD, headers=hub))
    assert store.fetch("asset").files[0]["checked"] == ["git-sha1 (ETag (git blob id))"]
    store = one_file_store(tmp_path / "b", server, Route(OTHER, headers=hub), name="bad")
    with pytest.raises(WeightsError, match="does not match the server's ETag"):
        store.fetch("bad")
    assert_no_half_written(store, "bad")


def test_html_page_instead_of_the_file(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(b"<html>quota exceeded</html>", mode="html"))
    with pytest.raises(WeightsError, match="sent an HTML page") as err:
        store.fetch("asset")
    assert "--weights PATH" in one_line(err)
    assert_no_half_written(store)


def test_unreachable_host_is_one_line(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    reg: Registry[Asset] = Registry("weights asset", WeightsError)
    reg.add("gone", Asset("gone", "", (AssetFile("m.pth", f"http://127.0.0.1:{port}/m.pth"),)))
    store = WeightStore(tmp_path / "weights", reg)
    with pytest.raises(WeightsError, match=r"cannot reach 127\.0\.0\.1") as err:
        store.fetch("gone")
    one_line(err)
    assert_no_half_written(store, "gone")


def test_concurrent_fetches_download_once(tmp_path, server):
    route = Route(GOOD, delay_s=0.01)
    store = one_file_store(tmp_path, server, route, sha256=sha(GOOD))
    results, errors = [], []

    def fetch():
        try:
            results.append(WeightStore(store.root, store.assets).fetch("asset"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2
    assert route.served == 1 and sorted(r.downloaded for r in results) == [False, True]


# --------------------------------------------------------------------------- #
# Unpinned files: recorded on first fetch, changes detected
# --------------------------------------------------------------------------- #
def test_unpinned_file_is_recorded_and_local_changes_are_caught(tmp_path, server):
    store = one_file_store(tmp_path, server, Route(GOOD))
    store.fetch("asset")
    rec = json.loads((store.root / "asset" / MANIFEST).read_text())["files"][0]
    assert rec["sha256"] == sha(GOOD) and rec["pinned"] is False

    path = store.root / "asset" / "model.pth"
    path.write_bytes(OTHER)  # same size, new content, new mtime
    assert store.status("asset").state == "corrupt"
    with pytest.raises(WeightsError, match="changed after it was fetched") as err:
        store.ensure("asset")
    assert "fmeval weights fetch asset --force" in one_line(err)
    path.write_bytes(GOOD[:10])
    assert store.status("asset").state == "modified"
    res = store.fetch("asset", force=True)
    assert res.entry.read_bytes() == GOOD and res.changed == []


# --------------------------------------------------------------------------- #
# Using assets: ensure, --weights NAME, the create_adapter hook
# --------------------------------------------------------------------------- #
def test_ensure_offline_is_one_line_and_makes_no_request(tmp_path, server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = one_file_store(tmp_path, server, Route(GOOD))
    with pytest.raises(WeightsError) as err:
        store.ensure("asset", purpose="pretrained thing")
    msg = one_line(err)
    assert msg.startswith("pretrained thing: its weights are not in the weights cache")
    for needle in ("HF_HUB_OFFLINE=1", "`fmeval weights fetch asset`", "--weights PATH", "--tiny"):
        assert needle in msg
    assert server.log == []


def test_ensure_fetches_on_first_use_when_online(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FMEVAL_OFFLINE", raising=False)
    store = one_file_store(tmp_path, server, Route(GOOD))
    assert store.ensure("asset").read_bytes() == GOOD
    monkeypatch.setenv("FMEVAL_OFFLINE", "1")  # present: no network needed any more
    assert store.ensure("asset") == store.root / "asset" / "model.pth"


def test_failed_auto_fetch_names_the_alternatives(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    store = one_file_store(tmp_path, server, Route(GOOD, mode="404"))
    with pytest.raises(WeightsError, match=r"fetching failed \(asset: model.pth: HTTP 404") as err:
        store.ensure("asset")
    assert "--tiny" in one_line(err)


def test_resolve_weights_prefers_existing_paths(tmp_path, server, monkeypatch):
    store = one_file_store(tmp_path, server, Route(GOOD))
    local = tmp_path / "asset"  # a real path with the asset's name wins
    local.write_bytes(b"mine")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("asset", store) == Path("asset")
    local.unlink()
    store.fetch("asset")
    assert resolve_weights("asset", store) == store.root / "asset" / "model.pth"
    with pytest.raises(ModelError, match="does not exist; did you mean the weights asset asset"):
        resolve_weights("asste", store)
    assert resolve_weights(None, store) is None


def test_builtin_registry_has_no_invented_pins():
    assert {"medclip", "medvit-small", "medvit-base", "medvit-large"} <= set(ASSETS.names())
    for entry in ASSETS:
        for f in entry.obj.files:
            assert f.url.startswith("https://") and f.note
            assert f.sha256 is None  # no authoritative SHA-256 published: unpinned, see registry


def test_mirror_redirects_every_url(monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/mirror/")
    medclip = ASSETS.get("medclip")
    assert [medclip.url(f) for f in medclip.files] == [
        "http://127.0.0.1:9/mirror/medclip/medclip-vit-pretrained.zip",
        "http://127.0.0.1:9/mirror/medclip/vocab.txt",
    ]


def test_offline_pretrained_medclip_and_medvit_name_the_fetch_command():
    for model, asset in (("medclip", "medclip"), ("medvit-base", "medvit-base")):
        with pytest.raises(WeightsError) as err:
            create_adapter(model)
        msg = one_line(err)
        assert f"`fmeval weights fetch {asset}`" in msg and "--weights" in msg and "--tiny" in msg


def _medvit_checkpoint(seed: int) -> tuple[bytes, torch.nn.Module]:
    src = create_adapter("medvit-small", tiny=True, seed=seed)
    buf = io.BytesIO()
    torch.save({"model": src.backbone.state_dict()}, buf)
    return buf.getvalue(), src


def test_weights_name_loads_a_fetched_medvit_through_the_mirror(server, monkeypatch, capsys):
    from fmeval.cli import main

    blob, src = _medvit_checkpoint(seed=3)
    server.add("/medvit-small/MedViT_small_im1k.pth", Route(blob))
    monkeypatch.setenv(MIRROR_ENV, server.base)
    with pytest.raises(SystemExit) as exit_:
        main(["weights", "fetch", "medvit-small"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "fetched medvit-small" in out and sha(blob) in out and "unpinned" in out

    with pytest.raises(SystemExit) as exit_:
        main(["weights", "ls"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and re.search(r"medvit-small\s+.\s*present\s+.\s*recorded", out)

    loaded = create_adapter("medvit-small", tiny=True, weights="medvit-small")
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(src.encode_image(x), loaded.encode_image(x))


def test_pretrained_medvit_is_fetched_on_first_use(server, monkeypatch):
    """The create_adapter hook: no --weights, a network -> the asset is fetched, then loaded."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server.add("/medvit-small/MedViT_small_im1k.pth", Route(b"not a checkpoint"))
    monkeypatch.setenv(MIRROR_ENV, server.base)
    with pytest.raises(ModelError, match="cannot read checkpoint .*MedViT_small_im1k.pth"):
        create_adapter("medvit-small")  # full-size, pretrained
    assert [p for p, _ in server.log] == ["/medvit-small/MedViT_small_im1k.pth"]
    assert WeightStore().status("medvit-small").state == "present"


def test_weights_name_loads_a_fetched_medclip_zip(server, monkeypatch):
    src = create_adapter("medclip", tiny=True, seed=4)
    buf = io.BytesIO()
    torch.save(src.model.state_dict(), buf)
    server.add("/medclip/medclip-vit-pretrained.zip",
               Route(make_zip({"medclip-vit/pytorch_model.bin": buf.getvalue()})))
    server.add("/medclip/vocab.txt", Route(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nlung\n"))
    monkeypatch.setenv(MIRROR_ENV, server.base)
    WeightStore().fetch("medclip")
    loaded = create_adapter("medclip", tiny=True, weights="medclip")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.encode_image(x), loaded.encode_image(x))


def test_cli_fetch_errors_are_one_red_line(server, monkeypatch, capsys):
    from fmeval.cli import main

    monkeypatch.setenv(MIRROR_ENV, server.base)  # serves nothing: 404
    for argv, needle in ((["weights", "fetch", "medvit-large"], "HTTP 404"),
                         (["weights", "fetch", "medvit-tiny"], "unknown weights asset")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and needle in err
        assert "Traceback" not in err and err.count("error:") == 1
    assert_no_half_written(WeightStore(), "medvit-large")


def test_force_refetch_with_a_new_upstream_hash_needs_accept_new_hash(tmp_path, server, capsys):
    """An unpinned file recorded at its first fetch is not silently replaced by another file."""
    from helpers import run

    store = one_file_store(tmp_path, server, Route(GOOD))
    store.fetch("asset")
    server.add("/asset/model.pth", Route(OTHER))  # upstream changed (or was swapped)
    with pytest.raises(WeightsError, match="changed upstream") as err:
        store.fetch("asset", force=True)
    assert "--accept-new-hash" in one_line(err)
    assert (store.root / "asset" / "model.pth").read_bytes() == GOOD  # the recorded copy is kept
    assert not list((store.root / ".partial").rglob("*.part"))
    res = store.fetch("asset", force=True, accept_new_hash=True)
    assert res.entry.read_bytes() == OTHER and res.changed == ["model.pth"]
    code, out, err = run(capsys, "weights", "fetch", "--help")
    assert "--accept-new-hash" in " ".join(out.split())


def test_mirror_credentials_never_reach_a_message_or_the_manifest(tmp_path, server, monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    reg: Registry[Asset] = Registry("weights asset", WeightsError)
    reg.add("asset", Asset("asset", "", (AssetFile("model.pth", "http://example.invalid/model.pth"),),
                           entry="model.pth"))
    store = WeightStore(tmp_path / "weights", reg)
    for mirror in (f"http://alice:s3cret@127.0.0.1:{port}/m", "ftp://alice:s3cret@127.0.0.1/m",
                   f"{server.base.replace('http://', 'http://alice:s3cret@')}/missing"):
        monkeypatch.setenv(MIRROR_ENV, mirror)
        with pytest.raises(WeightsError) as err:
            store.fetch("asset")
        assert "s3cret" not in str(err.value) and "alice" not in str(err.value), str(err.value)
    server.add("/m/asset/model.pth", Route(GOOD))
    monkeypatch.setenv(MIRROR_ENV, f"{server.base.replace('http://', 'http://alice:s3cret@')}/m")
    try:
        store.fetch("asset")
    except WeightsError as exc:  # urllib may refuse userinfo in a URL: still no password shown
        assert "s3cret" not in str(exc)
    else:
        assert "s3cret" not in (store.root / "asset" / MANIFEST).read_text()
