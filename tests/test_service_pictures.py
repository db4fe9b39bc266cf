"""The service's edits by pictures, its kept plans and its sweep (issue 28), on the toy domain."""

from __future__ import annotations

import pytest

from deltaedit import service
from deltaedit.errors import InputError

PAIRS = service.EXAMPLES_DIR


def test_picture_errors_name_the_picture_never_a_server_path(tmp_path):
    bad = tmp_path / "upload" / "a.png"
    bad.parent.mkdir()
    bad.write_text("not a picture")
    with pytest.raises(InputError) as caught:
        service.edit("gan", "toy", seed=1, example_a=str(bad), example_b=str(PAIRS / "toy_pair_glasses_b.png"))
    message = str(caught.value)
    assert message.startswith("Example picture A is not") and str(tmp_path) not in message
    with pytest.raises(InputError, match="both pictures"):
        service.edit("gan", "toy", seed=1, example_b=str(PAIRS / "toy_pair_glasses_b.png"))


def test_kept_plans_are_bounded_and_a_lost_one_says_what_to_do():
    store = service.PlanStore(max_plans=3)
    for i in range(5):
        store.keep("toy", object(), token=f"session{i}")
    assert len(store) == 3 and not store.has("session0") and store.has("session4")
    store.keep("toy", object(), token="session2")  # a session's new edit replaces its last
    store.keep("toy", object(), token="session5")
    assert store.has("session2") and not store.has("session3")
    store.drop("session2")
    with pytest.raises(InputError, match="press Edit again"):
        store.get("session2")


def test_a_redraw_reuses_the_kept_edit_and_a_sweep_gives_its_frames():
    view = service.edit("gan", "toy", target="face with eyeglasses", seed=3, keep_plan=True)
    assert service.edit("gan", "toy", target="face with eyeglasses", seed=3).extra["plan"] is None
    token = service.PLANS.keep("toy", view.extra["plan"])
    redrawn = service.redraw(token, 1.4)
    assert redrawn.extra["mapper_runs"] == 0 and redrawn.strength == 1.4
    assert "redrawn at strength 1.4" in redrawn.summary
    sweep = service.sweep("gan", "toy", target="face with eyeglasses\nface with bangs", seed=3, count=3)
    assert [caption for _, caption in sweep.frames] == ["0.00", "0.85", "1.70"]
    assert sweep.animation.suffix == ".gif" and sweep.animation.is_file()
    with pytest.raises(InputError, match="2 to 12 frames"):
        service.sweep("gan", "toy", target="face", count=40)
    with pytest.raises(InputError, match="at most 800"):
        service.sweep("diffusion", "toy", target="face", count=12, steps=200)
