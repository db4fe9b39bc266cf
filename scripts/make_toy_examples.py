"""Write the app's example inputs (assets/examples/toy_*.png): toy renders with chosen attributes.

Run after changing the renderer: `python scripts/make_toy_examples.py`. Which prompts the app pairs
with each picture is `deltaedit.service.EXAMPLES`; `tests/test_service.py` checks that every example
changes the picture (a target the face already shows would not), so rerun it after changing either.
"""

from pathlib import Path

from deltaedit.toy.attributes import FaceAttributes
from deltaedit.toy.render import render

OUT = Path(__file__).resolve().parents[1] / "assets" / "examples"
EXAMPLES = {
    "toy_black_hair": FaceAttributes(hair_color="black", clothes_color="blue", background_color="cyan"),
    "toy_brown_hair": FaceAttributes(
        hair_color="brown", skin_tone="pale", clothes_color="green", background_color="pink"
    ),
    "toy_glasses": FaceAttributes(
        hair_color="blond", eyeglasses="yes", clothes_color="orange", background_color="gray"
    ),
    "toy_red_hair": FaceAttributes(
        hair_color="red", bangs="yes", skin_tone="tanned", clothes_color="purple", background_color="white"
    ),
    # Example pairs for edits by example: another face, before (a) and after (b) one change.
    "toy_pair_glasses_a": FaceAttributes(hair_color="brown", clothes_color="green", background_color="white"),
    "toy_pair_glasses_b": FaceAttributes(
        hair_color="brown", eyeglasses="yes", clothes_color="green", background_color="white"
    ),
    "toy_pair_blond_a": FaceAttributes(hair_color="black", skin_tone="pale", background_color="pink"),
    "toy_pair_blond_b": FaceAttributes(hair_color="blond", skin_tone="pale", background_color="pink"),
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, attributes in EXAMPLES.items():
        render(attributes).save(OUT / f"{name}.png")
        print(f"wrote {OUT / name}.png")
