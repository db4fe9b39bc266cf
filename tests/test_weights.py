"""Weights registry: lookup order, hashes, downloads (local servers and fakes), offline errors, checks."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from deltaedit import weight_registry, weights
from deltaedit.cli import main as cli_main
from deltaedit.domain import Domain
from deltaedit.errors import WeightsError
from deltaedit.weights import WeightSource

FFHQ_FILES = [
    "stylegan2-ffhq-config-f.pt",
    "e4e_ffhq_encode.pt",
    "net_face.pth",
    "fs3.npy",
    "open_clip_model.safetensors",
    "shape_predictor_68_face_landmarks.dat",
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Every cache and override points into tmp_path; nothing from the real machine leaks in."""
    monkeypatch.setenv("DELTAEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in (
        "DELTAEDIT_WEIGHTS_DIR",
        "HF_HUB_OFFLINE",
        "DELTAEDIT_OFFLINE",
        "HF_ENDPOINT",
        "DELTAEDIT_D_FFHQ_REPO",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(weight_registry, "PACKAGED_DIR", tmp_path / "packaged")
    monkeypatch.setattr(weights, "_reachability", {})
    monkeypatch.setattr(weights, "TIMEOUT", 3.0)
    return tmp_path


def _register(monkeypatch, **kwargs) -> WeightSource:
    src = WeightSource(**{"tag": "test-file", "filename": "thing.bin", **kwargs})
    monkeypatch.setitem(weights.REGISTRY, src.tag, src)
    return src


class _Server:
    """A local HTTP server; `handler(request_handler, count)` answers each GET (count from 1)."""

    def __init__(self, handler):
        self.count = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                outer.handle(self, head=True)

            def do_GET(self):
                outer.count += 1
                outer.handle(self, head=False)

        self.handle = lambda req, head: handler(req, head, self.count)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(handler):
        servers.append(_Server(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _send(req, body: bytes, head=False, length=None, headers=None):
    req.send_response(200)
    req.send_header("Content-Length", str(len(body) if length is None else length))
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    if not head:
        req.wfile.write(body)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- lookup order ------------------------------------------------------------------------------
def test_weights_dir_argument_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "net_face.pth").write_bytes(d.name.encode())
    monkeypatch.setenv("DELTAEDIT_WEIGHTS_DIR", str(b))
    assert weights.resolve("deltaedit-net-face", weights_dir=a) == a / "net_face.pth"
    assert weights.resolve("deltaedit-net-face") == b / "net_face.pth"  # env var
    assert weights.resolve("deltaedit-net-face", weights_dir=tmp_path / "empty") == b / "net_face.pth"


def test_packaged_and_cache_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAEDIT_OFFLINE", "1")
    (tmp_path / "packaged").mkdir()
    (tmp_path / "packaged" / "fs3.npy").write_bytes(b"x")
    assert weights.resolve("toy-fs3") == tmp_path / "packaged" / "fs3.npy"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "net_face.pth").write_bytes(b"x")
    assert weights.resolve("deltaedit-net-face") == tmp_path / "cache" / "net_face.pth"


def test_unknown_tag():
    with pytest.raises(ValueError, match="unknown weights tag"):
        weights.resolve("no-such-tag")


# ---- hashes ------------------------------------------------------------------------------------
def test_hash_verified_once_and_mismatch_names_file(tmp_path, monkeypatch):
    data = b"weights!"
    src = _register(monkeypatch, sha256=hashlib.sha256(data).hexdigest())
    d = tmp_path / "w"
    d.mkdir()
    (d / src.filename).write_bytes(data)
    assert weights.resolve(src.tag, weights_dir=d) == d / src.filename
    assert (d / (src.filename + ".sha256")).is_file()

    def boom(*a, **k):
        raise AssertionError("hash recomputed")

    with monkeypatch.context() as m:
        m.setattr(weights.hashlib, "sha256", boom)  # the sidecar must answer now
        assert weights.resolve(src.tag, weights_dir=d) == d / src.filename

    _register(monkeypatch, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(WeightsError, match=str(d / src.filename)):
        weights.resolve(src.tag, weights_dir=d, download=False)
    assert (d / src.filename).exists()  # a user's own file is never deleted


def test_hash_sidecar_is_trusted_only_for_the_same_size_and_mtime(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"first version")
    assert weights.file_sha256(path) == hashlib.sha256(b"first version").hexdigest()
    stamp = path.stat().st_mtime_ns
    # Same size, new content, another mtime: the sidecar's hash is stale.
    path.write_bytes(b"other version")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert weights.file_sha256(path) == hashlib.sha256(b"other version").hexdigest()
    # Another size with the mtime the sidecar recorded: stale as well.
    path.write_bytes(b"a longer third version")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert weights.file_sha256(path) == hashlib.sha256(b"a longer third version").hexdigest()


# ---- URL downloads -----------------------------------------------------------------------------
def test_url_download_to_cache(tmp_path, monkeypatch, serve):
    data = b"0123456789" * 1000
    server = serve(lambda req, head, n: _send(req, data, head))
    src = _register(monkeypatch, url=server.url + "/thing.bin", sha256=hashlib.sha256(data).hexdigest())
    path = weights.resolve(src.tag, progress=False)
    assert path == tmp_path / "cache" / src.filename
    assert path.read_bytes() == data
    assert weights.resolve(src.tag) == path and server.count == 1  # second call: no download
    assert _leftovers(tmp_path / "cache") == ["thing.bin", "thing.bin.sha256"]


def test_cut_body_leaves_no_partial_file(tmp_path, monkeypatch, serve):
    data = b"x" * 5000

    def cut(req, head, n):
        _send(req, data[:1000], head, length=len(data))  # promise 5000 bytes, send 1000, close
        req.close_connection = True

    server = serve(cut)
    src = _register(monkeypatch, url=server.url + "/thing.bin")
    with pytest.raises(WeightsError, match="thing.bin"):
        weights.resolve(src.tag, progress=False)
    assert _leftovers(tmp_path / "cache") == []


def test_hash_mismatch_redownloads_once(tmp_path, monkeypatch, serve):
    good = b"good weights"
    server = serve(lambda req, head, n: _send(req, b"bad!" if n == 1 else good, head))
    src = _register(monkeypatch, url=server.url + "/thing.bin", sha256=hashlib.sha256(good).hexdigest())
    assert weights.resolve(src.tag, progress=False).read_bytes() == good
    assert server.count == 2

    always_bad = serve(lambda req, head, n: _send(req, b"bad!", head))
    src = _register(monkeypatch, url=always_bad.url + "/thing.bin", sha256=hashlib.sha256(good).hexdigest())
    for leftover in (tmp_path / "cache").iterdir():  # the good file and its hash sidecar: a fresh start
        leftover.unlink()
    with pytest.raises(WeightsError, match="sha256"):
        weights.resolve(src.tag, progress=False)
    assert always_bad.count == 2
    assert not (tmp_path / "cache" / src.filename).exists()


# ---- hub and Google Drive ----------------------------------------------------------------------
def _fake_hub(data: bytes):
    def handler(req, head, n):
        if "/resolve/" not in req.path:
            req.send_response(404)
            req.end_headers()
            return
        headers = {"X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        _send(req, data, head, headers=headers)

    return handler


def test_hub_download_through_fake_endpoint(tmp_path, monkeypatch, serve):
    data = b"hub weights" * 100
    server = serve(_fake_hub(data))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    src = _register(monkeypatch, hub_repo="org/repo", hub_filename="remote.bin", filename="local.bin")
    path = weights.resolve(src.tag, progress=False)
    assert path.read_bytes() == data
    assert str(path).startswith(str(tmp_path / "hf"))  # huggingface_hub's own cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.find_local(src.tag) == (path, "hub cache")
    assert weights.resolve(src.tag) == path
    monkeypatch.delenv("HF_HUB_OFFLINE")
    target = tmp_path / "carry"
    fetched = weights.fetch(src.tag, target_dir=target, progress=False)
    assert fetched == target / "local.bin" and fetched.read_bytes() == data  # official local name


def test_gdrive_download_with_gdown(tmp_path, monkeypatch):
    import gdown

    monkeypatch.setattr(weights, "_check_reachable", lambda url: None)
    seen = {}

    def fake_download(id=None, output=None, quiet=False, timeout=None, **kwargs):
        seen.update(id=id, timeout=timeout)
        Path(output).write_bytes(b"mapper")
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    path = weights.resolve("deltaedit-net-face", progress=False)
    assert path == tmp_path / "cache" / "net_face.pth" and path.read_bytes() == b"mapper"
    assert seen == {"id": "1Mb2WiELoVDPDIi24tIfoWsjn1l2xTjtZ", "timeout": weights.TIMEOUT}

    path.unlink()
    monkeypatch.setattr(gdown, "download", lambda **kw: None)  # gdown's "could not download"
    with pytest.raises(WeightsError, match="net_face.pth"):
        weights.resolve("deltaedit-net-face", progress=False)
    assert _leftovers(tmp_path / "cache") == []


# ---- offline / unreachable ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_missing_weights_fail_fast_and_name_every_file(tmp_path, monkeypatch, mode):
    if mode == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # nothing listens on port 9 of 127.0.0.1: every source is refused at once
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        Domain.open("ffhq").weight("clip")  # the domain's error names every missing file of it
    assert time.perf_counter() - t < 10
    message = str(info.value)
    for name in FFHQ_FILES:
        assert name in message
    assert "--weights-dir" in message and "DELTAEDIT_WEIGHTS_DIR" in message


def test_deltaedit_d_has_no_published_source(monkeypatch):
    with pytest.raises(WeightsError, match="no DeltaEdit-D weights are published"):
        weights.resolve("deltaedit-d-ffhq")


# ---- the e4e file as generator -----------------------------------------------------------------
def test_e4e_file_serves_as_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "w"
    d.mkdir()
    (d / "e4e_ffhq_encode.pt").write_bytes(b"e4e")
    assert weights.resolve_generator(d) == (d / "e4e_ffhq_encode.pt", "decoder.")
    (d / "stylegan2-ffhq-config-f.pt").write_bytes(b"g")
    assert weights.resolve_generator(d) == (d / "stylegan2-ffhq-config-f.pt", None)
    # and a domain whose generator is covered by the e4e file does not list it as missing
    (d / "stylegan2-ffhq-config-f.pt").unlink()
    missing = [s.filename for s in Domain.open("ffhq", d).missing()]
    assert "stylegan2-ffhq-config-f.pt" not in missing and "net_face.pth" in missing


# ---- reading and checking ----------------------------------------------------------------------
def test_load_torch_file(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=4)}, path)
    assert torch.equal(weights.load_torch_file(path)["g_ema"]["w"], torch.ones(2))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="truncated.pt"):
        weights.load_torch_file(truncated)

    code = tmp_path / "code.pt"
    torch.save({"obj": _Custom()}, code)
    with pytest.raises(WeightsError, match="code.pt"):
        weights.load_torch_file(code)
    with pytest.raises(WeightsError, match="missing.pt"):
        weights.load_torch_file(tmp_path / "missing.pt")


@dataclasses.dataclass
class _Custom:
    x: int = 1


def test_check_state_dict_names_file_and_key():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    good = {k: v.clone() for k, v in module.state_dict().items()}
    weights.check_state_dict(good, module, "f.pt")
    weights.check_state_dict(good, {"0.weight": (3, 2), "0.bias": [3]}, "f.pt")
    with pytest.raises(WeightsError, match=r"f\.pt.*missing key '0\.bias'"):
        weights.check_state_dict({"0.weight": good["0.weight"]}, module, "f.pt")
    with pytest.raises(WeightsError, match="unexpected key 'extra'"):
        weights.check_state_dict({**good, "extra": torch.zeros(1)}, module, "f.pt")
    with pytest.raises(WeightsError, match=r"'0\.weight' has shape \[2, 2\], expected \[3, 2\]"):
        weights.check_state_dict({**good, "0.weight": torch.zeros(2, 2)}, module, "f.pt")


# ---- the download command ----------------------------------------------------------------------
def test_download_command_reports_each_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "w"
    d.mkdir()
    (d / "fs3.npy").write_bytes(b"x")
    assert cli_main(["download", "--domain", "ffhq", "--weights-dir", str(d), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "styleclip-fs3-ffhq" in out and "present (weights dir)" in out
    assert out.count("MISSING") == 5 and "skipped (optional" in out
    for name in FFHQ_FILES:
        assert name in out

    packaged = tmp_path / "packaged"
    packaged.mkdir()
    for src in weights.REGISTRY.values():
        if src.packaged and not src.is_dir:
            (packaged / src.filename).write_bytes(b"x")
    assert cli_main(["download", "--domain", "toy", "--no-progress"]) == 0
    assert "MISSING" not in capsys.readouterr().out
