"""`python -m deltaedit edit --backbone gan`: outputs, options, and bad input (exit 2, one line).

Most tests run the command in-process (`deltaedit.cli.main`) on the tiny FFHQ-format domain; one
runs the real `python -m deltaedit` in a subprocess against the full-size random weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_ffhq import (
    CLIP_FILE,
    GENERATOR_FILE,
    MAPPER_FILE,
    copy_weights,
    tiny_latents,
)
from PIL import Image

from deltaedit import cli

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["fixtures_ffhq"]  # tiny_ffhq, ffhq_weights, ffhq_weights_with_e4e

PHOTO = "data/photos/aligned_face_256.jpg"


def run_edit(capsys, weights, *args: str) -> tuple[int, str, str]:
    argv = ["edit", "--backbone", "gan", "--domain", "ffhq", "--weights-dir", str(weights), "--device", "cpu"]
    code = cli.main([*argv, *args])
    out, err = capsys.readouterr()
    return code, out, err


def png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img).astype(np.int16)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("INFO", "WARNING", "notice:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def latent_file(tiny_ffhq, tmp_path) -> Path:
    path = tmp_path / "w.npy"
    np.save(path, tiny_latents(tiny_ffhq, seed=31).numpy())
    return path


# ---- outputs ---------------------------------------------------------------------------------
def test_latents_2d_and_3d_give_the_same_pngs(tiny_ffhq, tmp_path, latent_file, capsys):
    np.save(tmp_path / "w3.npy", np.load(latent_file)[None])
    a, b, src = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "src.png"
    target = ["--target", "face with smile"]
    code, out, _ = run_edit(
        capsys, tiny_ffhq.weights, "--latents", str(latent_file), *target, "--out", str(a)
    )
    assert code == 0 and str(a) in out
    code, _, _ = run_edit(
        capsys, tiny_ffhq.weights, "--latents", str(tmp_path / "w3.npy"), *target, "--out", str(b),
        "--source-out", str(src),
    )  # fmt: skip
    assert code == 0
    edited, source = png(a), png(src)
    assert edited.shape == (tiny_ffhq.size, tiny_ffhq.size, 3)  # the generator's resolution
    np.testing.assert_array_equal(edited, png(b))
    assert np.abs(edited - source).mean() > 1  # an edit happened


def test_pngs_round_like_save_image(tiny_ffhq, tmp_path, latent_file, capsys):
    """8-bit values = floor(255 * (clamp(x, -1, 1) + 1) / 2 + 0.5), torchvision's save_image."""
    from torchvision.utils import save_image

    from deltaedit import load_editor

    out = tmp_path / "edit.png"
    code, _, _ = run_edit(
        capsys, tiny_ffhq.weights, "--latents", str(latent_file), "--target", "old face", "--out", str(out)
    )
    assert code == 0
    editor = load_editor("ffhq", "gan", "cpu", tiny_ffhq.weights)
    result = editor.edit(latents=torch.from_numpy(np.load(latent_file)), targets="old face")
    save_image(result.edited_tensor, tmp_path / "tv.png", normalize=True, value_range=(-1, 1))
    np.testing.assert_array_equal(png(out), png(tmp_path / "tv.png"))


def test_several_targets_write_numbered_files(tiny_ffhq, tmp_path, latent_file, capsys):
    out = tmp_path / "edit.png"
    code, stdout, _ = run_edit(
        capsys, tiny_ffhq.weights, "--latents", str(latent_file), "--target", "face with blond hair",
        "--target", "face with beard", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    second = tmp_path / "edit_1.png"
    assert out.is_file() and second.is_file() and str(second) in stdout
    single = tmp_path / "single.png"
    run_edit(
        capsys,
        tiny_ffhq.weights,
        "--latents",
        str(latent_file),
        "--target",
        "face with beard",
        "--out",
        str(single),
    )
    assert np.abs(png(second) - png(single)).max() <= 1  # batched == separate, up to rounding
    assert np.abs(png(out) - png(second)).mean() > 0.5


def test_photo_with_no_align_and_options(tiny_ffhq, shared_dir, tmp_path, capsys):
    photo = str(shared_dir / PHOTO)
    base, stronger, other = tmp_path / "base.png", tmp_path / "strong.png", tmp_path / "other.png"
    common = ["--image", photo, "--no-align", "--target", "face with bangs"]
    assert run_edit(capsys, tiny_ffhq.weights, *common, "--out", str(base))[0] == 0
    assert run_edit(capsys, tiny_ffhq.weights, *common, "--strength", "2.5", "--out", str(stronger))[0] == 0
    assert (
        run_edit(
            capsys,
            tiny_ffhq.weights,
            *common,
            "--source",
            "a face",
            "--threshold",
            "0.0",
            "--out",
            str(other),
        )[0]
        == 0
    )
    assert png(base).shape == (tiny_ffhq.size, tiny_ffhq.size, 3)
    assert np.abs(png(base) - png(stronger)).mean() > 0.5
    assert np.abs(png(base) - png(other)).mean() > 0.5


def test_generator_from_e4e_file_alone(tiny_ffhq, tmp_path, latent_file, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["--latents", str(latent_file), "--target", "face with a hat"]
    assert run_edit(capsys, tiny_ffhq.weights, *args, "--out", str(a))[0] == 0
    assert run_edit(capsys, tiny_ffhq.e4e_only, *args, "--out", str(b))[0] == 0
    np.testing.assert_array_equal(png(a), png(b))


def test_target_equal_to_source_writes_the_source_with_a_notice(tiny_ffhq, tmp_path, latent_file, capsys):
    out, src = tmp_path / "edit.png", tmp_path / "src.png"
    code, _, err = run_edit(
        capsys, tiny_ffhq.weights, "--latents", str(latent_file), "--target", "face", "--out", str(out),
        "--source-out", str(src),
    )  # fmt: skip
    assert code == 0 and "notice:" in err
    np.testing.assert_array_equal(png(out), png(src))


def test_long_prompt_runs_with_a_truncation_notice(tiny_ffhq, tmp_path, latent_file, capsys):
    long = "face with " + " ".join(["a"] * 90) + " curly hair"  # over 77 tokens, under 300 characters
    code, _, err = run_edit(
        capsys,
        tiny_ffhq.weights,
        "--latents",
        str(latent_file),
        "--target",
        long,
        "--out",
        str(tmp_path / "e.png"),
    )
    assert code == 0 and "notice:" in err and "Traceback" not in err


# ---- bad input: exit 2, one line --------------------------------------------------------------
def test_unreadable_and_truncated_images(tiny_ffhq, shared_dir, tmp_path, capsys):
    data = (shared_dir / PHOTO).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.png").write_text("hello")
    for name in ("cut.jpg", "text.png", "absent.jpg"):
        code, _, err = run_edit(
            capsys, tiny_ffhq.weights, "--image", str(tmp_path / name), "--no-align", "--target", "face with smile",
            "--out", str(tmp_path / "o.png"),
        )  # fmt: skip
        assert_one_line_error(code, err, name)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("target", ["", "   "])
def test_empty_prompt(tiny_ffhq, tmp_path, latent_file, capsys, target):
    code, _, err = run_edit(
        capsys,
        tiny_ffhq.weights,
        "--latents",
        str(latent_file),
        "--target",
        target,
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "empty")


def test_wrong_latent_shapes_and_values(tiny_ffhq, tmp_path, capsys):
    n, d = tiny_ffhq.n_latent, tiny_ffhq.style_dim
    nan = np.zeros((n, d), np.float32)
    nan[2, 2] = np.nan
    cases = {
        "rows.npy": np.zeros((n - 1, d), np.float32),
        "wide.npy": np.zeros((n, d + 1), np.float32),
        "batch.npy": np.zeros((3, n, d), np.float32),
        "flat.npy": np.zeros(n * d, np.float32),
        "nan.npy": nan,
        "text.npy": np.array(["a", "b"]),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        code, _, err = run_edit(
            capsys,
            tiny_ffhq.weights,
            "--latents",
            str(tmp_path / name),
            "--target",
            "face with smile",
            "--out",
            str(tmp_path / "o.png"),
        )
        assert_one_line_error(code, err, name)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    code, _, err = run_edit(
        capsys,
        tiny_ffhq.weights,
        "--latents",
        str(tmp_path / "junk.npy"),
        "--target",
        "face with smile",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "junk.npy")


def test_bad_numbers_and_device(tiny_ffhq, tmp_path, latent_file, capsys):
    base = ["--latents", str(latent_file), "--target", "face with smile", "--out", str(tmp_path / "o.png")]
    assert_one_line_error(*run_edit(capsys, tiny_ffhq.weights, *base, "--strength", "nan")[::2], "strength")
    assert_one_line_error(*run_edit(capsys, tiny_ffhq.weights, *base, "--threshold", "-1")[::2], "threshold")
    if not torch.cuda.is_available():
        assert_one_line_error(*run_edit(capsys, tiny_ffhq.weights, *base, "--device", "cuda")[::2], "cuda")


def test_weight_files_with_wrong_keys_or_truncated(tiny_ffhq, tmp_path, latent_file, capsys):
    base = ["--latents", str(latent_file), "--target", "face with smile", "--out", str(tmp_path / "o.png")]
    wrong = copy_weights(tiny_ffhq.weights, tmp_path / "wrong")
    ckpt = torch.load(wrong / GENERATOR_FILE, weights_only=True)
    ckpt["g_ema"]["extra.weight"] = torch.zeros(3)
    torch.save(ckpt, wrong / GENERATOR_FILE)
    assert_one_line_error(*run_edit(capsys, wrong, *base)[::2], GENERATOR_FILE, "extra.weight")

    for name in (MAPPER_FILE, CLIP_FILE):
        # A fresh folder per file: loaded weights may be memory-mapped, so never rewrite them in place.
        cut = copy_weights(tiny_ffhq.weights, tmp_path / f"cut-{name}")
        path = cut / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        assert_one_line_error(*run_edit(capsys, cut, *base)[::2], name)


def test_missing_source_option_is_a_usage_error(tiny_ffhq, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["edit", "--target", "face with smile", "--out", str(tmp_path / "o.png")])
    assert exc.value.code == 2
    assert "--image" in capsys.readouterr().err


# ---- the real command line, full-size weights -------------------------------------------------
def test_python_m_deltaedit_reports_bad_latents_in_one_line(ffhq_weights, tmp_path):
    bad = np.zeros((18, 512), np.float32)
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    env = dict(os.environ, HF_HUB_OFFLINE="1", DELTAEDIT_OFFLINE="1", DELTAEDIT_CACHE=str(tmp_path / "cache"))
    env.pop("DELTAEDIT_WEIGHTS_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "deltaedit", "edit", "--backbone", "gan", "--domain", "ffhq", "--weights-dir",
         str(ffhq_weights), "--latents", str(tmp_path / "nan.npy"), "--target", "face with smile", "--device", "cpu",
         "--out", str(tmp_path / "o.png")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "nan.npy", "NaN")
    assert not (tmp_path / "o.png").exists()
