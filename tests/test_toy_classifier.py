"""Toy attribute classifier: shapes, learning, accuracy on held-out renders, safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaedit.errors import InputError, WeightsError
from deltaedit.toy.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, FaceAttributes
from deltaedit.toy.classifier import (
    ToyAttributeClassifier,
    classifier_loss,
    evaluate_accuracy,
    load_classifier,
    predict,
    predict_indices,
    save_classifier,
    train_classifier,
)
from deltaedit.toy.render import images_to_tensor, render_batch, render_many


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These convs are tiny: on the shared 2-core machine one thread is faster than two fighting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(_one_thread):
    # Brief training: enough to beat chance clearly, not the full >= 98 % recipe.
    torch.manual_seed(0)
    return train_classifier(n_images=600, steps=120, seed=0, batch_size=32)


def _targets(attrs):
    return torch.from_numpy(np.stack([a.to_vector() for a in attrs]))


def test_heads_match_the_schema():
    model = ToyAttributeClassifier()
    x, _ = render_batch(2, seed=0, as_tensor=True)
    logits = model(x)
    assert list(logits) == list(ATTRIBUTE_NAMES)
    for name, values in ATTRIBUTES.items():
        assert logits[name].shape == (2, len(values))
    with pytest.raises(InputError, match="expects images"):
        model(torch.zeros(1, 3, 32, 32))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    model = ToyAttributeClassifier()
    x, attrs = render_batch(32, seed=1, as_tensor=True)
    y = _targets(attrs)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = classifier_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_brief_training_beats_chance_on_held_out_renders(trained):
    acc = evaluate_accuracy(trained, n_images=300, seed=4242)
    for name, values in ATTRIBUTES.items():
        chance = 1 / len(values)
        assert acc[name] > chance + 0.2, (name, acc[name])
    assert np.mean(list(acc.values())) > 0.8


def test_predict_reads_a_changed_attribute(trained):
    # Same faces rendered with hair switched: the predicted hair must follow for most of them.
    _, attrs = render_batch(40, seed=77)
    black = images_to_tensor(render_many([a.replace(hair_color="black") for a in attrs]))
    blond = images_to_tensor(render_many([a.replace(hair_color="blond") for a in attrs]))
    p_black, p_blond = predict(trained, black), predict(trained, blond)
    assert sum(p["hair_color"] == "black" for p in p_black) >= 30
    assert sum(p["hair_color"] == "blond" for p in p_blond) >= 30
    assert set(p_black[0]) == set(ATTRIBUTE_NAMES)
    assert all(p[n] in ATTRIBUTES[n] for p in p_blond for n in ATTRIBUTE_NAMES)


def test_save_load_round_trip(trained, tmp_path):
    path = save_classifier(trained, tmp_path / "toy_classifier.safetensors")
    assert path.with_suffix(".json").is_file()
    loaded = load_classifier(path)
    x, _ = render_batch(8, seed=3, as_tensor=True)
    assert torch.equal(predict_indices(loaded, x), predict_indices(trained, x))
    # The config travels inside the safetensors file: the sidecar JSON is optional.
    path.with_suffix(".json").unlink()
    assert torch.equal(predict_indices(load_classifier(path), x), predict_indices(trained, x))


def test_load_errors_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError):
        load_classifier(bad)
    other = ToyAttributeClassifier(widths=(8, 16, 16), hidden=32)
    path = save_classifier(other, tmp_path / "small.safetensors")
    assert load_classifier(path).widths == (8, 16, 16)


def test_training_is_deterministic_per_seed():
    a = train_classifier(n_images=64, steps=3, seed=5, batch_size=16)
    b = train_classifier(n_images=64, steps=3, seed=5, batch_size=16)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bad_training_arguments():
    with pytest.raises(InputError):
        train_classifier(n_images=0, steps=1)


def test_face_attributes_vector_order_matches_heads():
    model = ToyAttributeClassifier()
    face = FaceAttributes(hair_color="red", face_width="thin")
    assert [model.attributes[n][i] for n, i in zip(model.attributes, face.to_vector())] == list(
        face.labels().values()
    )
