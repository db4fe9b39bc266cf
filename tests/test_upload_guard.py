"""The upload guard on its own (no server): which file values count as uploads.

The middleware that applies it (and the other per-request limits) is tested in test_request_guard.py.
"""

from __future__ import annotations

import os

from deltaedit.upload_guard import is_uploaded_file, refused_paths


def test_only_regular_files_inside_the_upload_folder_count(uploads, tmp_path):
    root = str(uploads)
    assert is_uploaded_file(f"{root}/abc123/face.png", root)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (uploads / "abc123" / "link.png").symlink_to(outside)
    (uploads / "linked").symlink_to(tmp_path)  # a symlinked folder inside the upload folder
    os.mkfifo(uploads / "abc123" / "fifo")
    refused = [
        str(outside),
        "/etc/passwd",
        "/dev/zero",
        "/proc/self/environ",
        f"{root}/abc123/link.png",
        f"{root}/linked/secret.png",
        f"{root}/abc123/fifo",
        f"{root}/abc123/missing.png",
        f"{root}/abc123",  # a folder
        f"{root}/../secret.png",
        f"{root}/abc123/../abc123/face.png",
        f"{root}//abc123/face.png",
        f"{root}abc/face.png",  # a sibling folder whose name starts the same
        f"{root}/",  # the folder itself, with a trailing separator
        f"{root}/abc123/face.png/",
        f"{root.upper()}/abc123/face.png",  # another case is another folder on Linux
        "abc123/face.png",
        f"file://{root}/abc123/face.png",
        "http://127.0.0.1/face.png",
        f"{root}/abc123/face.png\x00.jpg",
        "",
        None,
        42,
        ["/etc/passwd"],
    ]
    for path in refused:
        assert not is_uploaded_file(path, root), path


def test_paths_outside_the_upload_folder_are_never_touched(uploads, monkeypatch):
    root = str(uploads)
    # Near misses of the folder too: they must be refused lexically, before any look at the disk.
    sibling = uploads.parent / (uploads.name + "abc")
    sibling.mkdir()
    (sibling / "face.png").write_bytes(b"png")
    near_misses = [
        "/dev/zero",
        "/etc/passwd",
        f"{root}abc/face.png",  # a sibling folder sharing the prefix
        f"{root}abc",
        root,  # the folder itself
        f"{root}/",
        f"{root}//abc123/face.png",
        f"{root}/abc123/face.png/",  # a trailing separator
        f"{root.upper()}/abc123/face.png",  # case
        f"{root.swapcase()}/abc123/face.png",
    ]
    touched = []
    for name in ("lstat", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda p, *a, _real=real, **k: touched.append(p) or _real(p, *a, **k))
    for path in near_misses:
        assert not is_uploaded_file(path, root), path
    assert touched == []
    assert is_uploaded_file(f"{root}/abc123/face.png", root)  # the real upload is still looked at
    assert touched


def test_every_path_in_a_payload_is_checked_with_or_without_meta(uploads):
    good = f"{uploads}/abc123/face.png"
    payload = {
        "data": [
            "toy",
            {"path": good, "meta": {"_type": "gradio.FileData"}},
            {"path": "/etc/passwd"},  # no meta: Gradio itself does not check these
            [{"nested": {"path": "/dev/zero", "meta": {"_type": "gradio.FileData"}}}],
        ],
        "session_hash": "x",
    }
    assert sorted(refused_paths(payload, str(uploads))) == ["/dev/zero", "/etc/passwd"]
    assert refused_paths({"data": [{"path": good}]}, str(uploads)) == []


def test_a_url_without_an_uploaded_path_is_refused(uploads):
    good = f"{uploads}/abc123/face.png"
    urls = ["data:image/png;base64,iVBORw0KGgo=", "http://example.invalid/x.png", "file:///etc/passwd"]
    for url in urls:
        assert refused_paths({"data": ["toy", {"url": url}]}, str(uploads)) == [url]
        assert refused_paths({"data": [{"path": None, "url": url}]}, str(uploads)) == ["None"]
    # The page sends an upload's own URL beside its path: the path is what Gradio opens.
    served = f"http://127.0.0.1:7860/gradio_api/file={good}"
    assert refused_paths({"data": [{"path": good, "url": served}]}, str(uploads)) == []
    assert refused_paths({"data": [{"url": ""}, {"url": None}]}, str(uploads)) == []


