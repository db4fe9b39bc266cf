"""`publish-diffusion`: a DeltaEdit-D run uploaded with a generated model card (HfApi faked: no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deltaedit.cli import main
from deltaedit.errors import InputError, WeightsError
from deltaedit.publish import model_card, parse_eval, publish_diffusion

S = 10


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished toy-sized run made by the real command (2 steps on generator data)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    args = [
        "train-diffusion",
        "--data",
        "generator",
        "--domain",
        "toy",
        "--config",
        "tiny",
        "--out",
        str(out),
    ]
    args += [
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--warmup-steps",
        "0",
        "--sample-every",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    return out


class FakeApi:
    """Records create_repo / upload_folder calls and the files present at upload time."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.uploaded, self.card, self.fail = [], [], None, fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail:
            raise self.fail
        return SimpleNamespace(url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        root = Path(folder_path)
        self.uploaded = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.card = (root / "README.md").read_text()
        return SimpleNamespace(oid="f" * 40)


def test_publish_uploads_weights_record_and_card(run_dir):
    api = FakeApi()
    result = publish_diffusion(run_dir, "me/deltaedit-d-toy", eval_numbers={"PSNR": "31.2 dB"}, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["repo_type"] == "model"
    assert api.uploaded == [
        "README.md",
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "log.jsonl",
        "samples/step_000002.png",
        "scheduler/scheduler_config.json",
        "training.json",
    ]  # no optimizer checkpoint, no shards
    assert result.commit == "f" * 40 and result.files == api.uploaded
    assert "2 steps" in api.calls[1][2]["commit_message"]
    card = api.card
    command = next(
        line for line in card.splitlines() if line.startswith("python -m deltaedit train-diffusion")
    )
    for part in ("--data generator", "--domain toy", "--config tiny", "--steps 2", "--batch-size 2"):
        assert part in command
    assert "- steps: 2" in card and "| PSNR | 31.2 dB |" in card
    assert "drawn on the fly from the toy StyleGAN2" in card
    assert not any(p.name.startswith(".publish") for p in run_dir.iterdir())  # staging removed


def test_card_for_ffhq_from_a_public_model_says_how_to_load(run_dir, tmp_path):
    record = json.loads((run_dir / "training.json").read_text())
    record["settings"].update(domain="ffhq", init="google/ddpm-ema-celebahq-256")
    other = tmp_path / "run"
    other.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    (other / "training.json").write_text(json.dumps(record))
    card = model_card(other, "me/ffhq-d")
    assert "base_model: google/ddpm-ema-celebahq-256" in card
    assert "DELTAEDIT_D_FFHQ_REPO=me/ffhq-d DELTAEDIT_D_FFHQ_REVISION=" in card
    assert "No evaluation numbers" in card


def test_cli_publish_with_patched_hub_api(run_dir, monkeypatch, capsys):
    import huggingface_hub

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    assert main(["publish-diffusion", str(run_dir), "--repo", "me/d", "--eval", "success=0.5"]) == 0
    out = capsys.readouterr().out
    assert "uploaded 7 files to https://huggingface.co/me/d" in out and "f" * 40 in out
    assert "| success | 0.5 |" in api.card


def test_publish_errors(run_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="not a finished DeltaEdit-D run"):
        publish_diffusion(tmp_path, "me/d", api=FakeApi())
    with pytest.raises(InputError, match="USER/NAME"):
        publish_diffusion(run_dir, "no-slash", api=FakeApi())
    with pytest.raises(WeightsError, match="token"):
        publish_diffusion(run_dir, "me/d", api=FakeApi(fail=RuntimeError("401 Unauthorized")))
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_eval(["no equals sign"])
    assert main(["publish-diffusion", str(tmp_path), "--repo", "me/d"]) == 2
    assert "not a finished" in capsys.readouterr().err


def test_eval_numbers_from_json_and_flags(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps({"success": 0.7, "PSNR": "30 dB"}))
    assert parse_eval(["PSNR=31 dB"], tmp_path / "e.json") == {"success": 0.7, "PSNR": "31 dB"}


# ---- loading a published repo: DELTAEDIT_D_FFHQ_REPO through the weights registry ---------------------------
@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    from deltaedit import weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("DELTAEDIT_CACHE", str(tmp_path / "cache"))
    for var in (
        "DELTAEDIT_WEIGHTS_DIR",
        "HF_HUB_OFFLINE",
        "DELTAEDIT_OFFLINE",
        "HF_ENDPOINT",
        "DELTAEDIT_D_FFHQ_REVISION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DELTAEDIT_D_FFHQ_REPO", "me/ffhq-d")
    monkeypatch.setattr(weights, "_reachability", {})
    return tmp_path


def _published_snapshot(root: Path, commit: str = "a" * 40) -> Path:
    """A DeltaEdit-D folder in huggingface_hub's cache layout, as a download of `me/ffhq-d` leaves it."""
    from deltaedit.nn.style_unet import StyleConditionedUNet
    from deltaedit.pipelines.diffusion import DiffusionBackbone

    repo = root / "hf" / "models--me--ffhq-d"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    torch.manual_seed(0)
    DiffusionBackbone(StyleConditionedUNet.tiny(S)).save_pretrained(snapshot)
    return snapshot


def test_env_repo_loads_from_the_hub_cache_offline(hub_env, monkeypatch):
    from deltaedit import weights
    from deltaedit.pipelines.diffusion import DiffusionBackbone

    snapshot = _published_snapshot(hub_env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = weights.resolve("deltaedit-d-ffhq")
    assert path == snapshot and DiffusionBackbone.from_pretrained(path).style_dim == S
    monkeypatch.setenv("DELTAEDIT_D_FFHQ_REVISION", "a" * 40)  # a pinned commit that is cached
    assert weights.resolve("deltaedit-d-ffhq") == snapshot
    monkeypatch.setenv("DELTAEDIT_D_FFHQ_REVISION", "b" * 40)  # one that is not: offline error
    with pytest.raises(WeightsError, match="deltaedit-d-ffhq"):
        weights.resolve("deltaedit-d-ffhq")


def test_env_repo_download_fetches_only_the_model_files(hub_env, monkeypatch):
    import huggingface_hub

    from deltaedit import weights

    seen = {}

    def fake_snapshot_download(repo_id, local_files_only=False, allow_patterns=None, revision=None, **kw):
        if local_files_only:
            raise FileNotFoundError("not cached yet")
        seen.update(repo_id=repo_id, allow_patterns=allow_patterns, revision=revision)
        return str(_published_snapshot(hub_env))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(weights, "_check_reachable", lambda url: None)
    monkeypatch.setenv("DELTAEDIT_D_FFHQ_REVISION", "a" * 40)
    path = weights.resolve("deltaedit-d-ffhq", progress=False)
    assert (path / "config.json").is_file()
    assert seen == {
        "repo_id": "me/ffhq-d",
        "allow_patterns": list(weights.DIFFUSION_FILES),
        "revision": "a" * 40,
    }


def test_diffusion_editor_for_ffhq_loads_the_env_repo(hub_env, monkeypatch):
    """The CLI's and the app's DeltaEdit-D loader (DiffusionEditor.load) picks the repo up."""
    from deltaedit.pipelines import diffusion_editor

    _published_snapshot(hub_env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_gan = SimpleNamespace(layout=SimpleNamespace(total=S), config=SimpleNamespace(id="ffhq"))
    monkeypatch.setattr(diffusion_editor.GanEditor, "load", classmethod(lambda cls, *a, **k: fake_gan))
    diffusion_editor._cached_editor.cache_clear()
    try:
        editor = diffusion_editor.DiffusionEditor.load("ffhq", "cpu")
        assert editor.backbone.style_dim == S and editor.gan is fake_gan
    finally:
        diffusion_editor._cached_editor.cache_clear()


def test_weights_dir_folder_wins_over_the_env_repo(hub_env, monkeypatch, tmp_path):
    from deltaedit import weights
    from deltaedit.nn.style_unet import StyleConditionedUNet
    from deltaedit.pipelines.diffusion import DiffusionBackbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = tmp_path / "w" / "deltaedit-d-ffhq"
    DiffusionBackbone(StyleConditionedUNet.tiny(S)).save_pretrained(local)
    assert weights.resolve("deltaedit-d-ffhq", weights_dir=tmp_path / "w") == local
