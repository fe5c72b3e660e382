"""The demo model's training pieces that the build's recipe rests on: anchor scenes and the timestep mix.

The build itself takes most of an hour (a build step, not CI); these check what it is made of."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from transformers import CLIPTokenizer

from installer.demo_model import architecture, scenes
from installer.demo_model import train as train_module
from installer.demo_model.train import (
    TOKENIZER,
    Polish,
    Recipe,
    TrainingPictures,
    anchor_scene,
    draw_batch,
    encode_dataset,
    polish_denoiser,
    shape_weights,
    train_denoiser,
)
from installer.demo_model.training import diffusion_loss, training_schedule


def test_anchor_scenes_are_training_scenes_in_white_on_black_and_never_held_out():
    drawn = [anchor_scene(random.Random(seed)) for seed in range(400)]
    assert all(scene.background == ("black",) and not scene.split for scene in drawn)
    assert all(shape.colour == "white" for scene in drawn for shape in scene.shapes)
    assert not {scenes.single_key(scene) for scene in drawn} & scenes.HELD_OUT_KEYS
    # Every kind, size, place and count of the training scenes: only the colours are fixed.
    shapes = [shape for scene in drawn for shape in scene.shapes]
    assert {s.kind for s in shapes} == set(scenes.SHAPES) and {s.size for s in shapes} == set(scenes.SIZES)
    assert {s.position for s in shapes} == set(scenes.POSITIONS)
    assert {len(scene.shapes) for scene in drawn} == {1, 2, 3}


def test_a_build_without_anchors_draws_none_and_leaves_the_random_stream_alone(tmp_path):
    # --anchors 0: an empty set, nothing drawn from it, and the generator where it was, so the other
    # draws of every step are those of the build without anchors.
    empty = encode_dataset(tmp_path / "anchors.pt", None, 0, 0)
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    latents, drawn = draw_batch(empty, 0, generator)
    assert latents.shape == (0, 4, 16, 16) and drawn == []
    assert torch.equal(generator.get_state(), before)


class RecordingUNet(torch.nn.Module):
    """The demo UNet, remembering the timesteps it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights every time, so losses compare
        self.unet = architecture.build_unet()
        self.timesteps: list[int] = []
        self.hidden: list[torch.Tensor] = []

    def forward(self, sample, timestep, hidden):
        self.timesteps += timestep.tolist()
        self.hidden.append(hidden)
        return self.unet(sample, timestep, hidden)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(64, 4, 16, 16), torch.randn(64, 77, architecture.TEXT_CONFIG["hidden_size"])


def timesteps_drawn(batch, *mix) -> tuple[list[int], float]:
    steps, _, loss = recorded(batch, *mix)
    return steps, loss


def recorded(batch, *mix) -> tuple[list[int], torch.Tensor, float]:
    unet = RecordingUNet()
    with torch.no_grad():
        loss = diffusion_loss(unet, *batch, training_schedule(), torch.Generator().manual_seed(1), *mix)
    return unet.timesteps, unet.hidden[0], float(loss)


def test_timesteps_are_uniform_by_default_and_the_default_draws_are_unchanged(batch):
    steps, loss = timesteps_drawn(batch)
    assert min(steps) < 200 and max(steps) > 800
    # No lowest timestep: the random stream of the uniform recipe (noise, then timesteps) and no extra
    # draws, so the tests' LoRA training and the earlier builds replay exactly.
    generator = torch.Generator().manual_seed(1)
    torch.randn(batch[0].shape, generator=generator)
    assert steps == torch.randint(0, 1000, (64,), generator=generator).tolist()
    assert (steps, loss) == timesteps_drawn(batch, 0, 0.3)
    assert (steps, loss) == timesteps_drawn(batch, 0, 0.3, 0, 0.5)
    assert (steps, loss) == timesteps_drawn(batch, 0, 0.3, 0, 0.5, 1.0, None, 0.0)


def test_a_share_of_the_timesteps_comes_from_high_noise(batch):
    everything_high, _ = timesteps_drawn(batch, 700)
    assert min(everything_high) >= 700
    mixed, _ = timesteps_drawn(batch, 700, 0.5)
    high = sum(step >= 700 for step in mixed) / len(mixed)
    assert 0.5 < high < 0.9  # half drawn from 700 up, plus the uniform half's 30%
    assert min(mixed) < 700


def test_below_the_blind_timestep_a_share_is_drawn_and_every_caption_is_another_samples(batch):
    steps, hidden, _ = recorded(batch, 700, 0.4, 400, 0.5)
    low = torch.tensor(steps) < 400
    # Half drawn below 400, plus the other half's uniform 60% times 40%: about 62%.
    assert 0.5 < low.float().mean() < 0.75 and max(steps) >= 700
    captions, rolled = batch[1], batch[1].roll(1, dims=0)
    assert torch.equal(hidden[low], rolled[low])  # another sample's caption: no help from the text
    assert torch.equal(hidden[~low], captions[~low])  # higher up, the sample's own
    assert not torch.equal(rolled[low], captions[low])


def test_with_a_blind_share_only_that_share_of_the_low_samples_gets_another_caption(batch):
    steps, hidden, _ = recorded(batch, 700, 0.4, 400, 0.5, 0.5)
    low = torch.tensor(steps) < 400
    captions, rolled = batch[1], batch[1].roll(1, dims=0)
    wrong = (hidden == rolled).all(dim=(1, 2)) & ~(hidden == captions).all(dim=(1, 2))
    own = (hidden == captions).all(dim=(1, 2))
    assert bool((wrong | own).all()) and not wrong[~low].any()
    assert 0.25 < wrong[low].float().mean() < 0.75  # about half, not all, not none


def test_a_mislabel_share_gives_that_share_of_samples_at_every_timestep_another_caption(batch):
    steps, hidden, _ = recorded(batch, 0, 1.0, 0, 0.0, 1.0, None, 0.4)
    captions, rolled = batch[1], batch[1].roll(1, dims=0)
    wrong = (hidden == rolled).all(dim=(1, 2)) & ~(hidden == captions).all(dim=(1, 2))
    own = (hidden == captions).all(dim=(1, 2))
    assert bool((wrong | own).all())
    assert 0.2 < wrong.float().mean() < 0.6  # about 40%
    high = torch.tensor(steps) >= 500
    assert wrong[high].any() and wrong[~high].any()  # at high noise too, not only where blind
    # With the blind polish's low timesteps, those stay all wrong and the share adds to the rest.
    steps, hidden, _ = recorded(batch, 700, 0.4, 400, 0.5, 1.0, None, 0.4)
    low = torch.tensor(steps) < 400
    wrong = (hidden == rolled).all(dim=(1, 2)) & ~(hidden == captions).all(dim=(1, 2))
    assert bool(wrong[low].all()) and 0.1 < wrong[~low].float().mean() < 0.7


def test_a_wrong_background_share_names_another_background_and_nothing_else():
    rng = random.Random(3)
    drawn = [scenes.random_scene(rng) for _ in range(400)]
    always = TrainingPictures({}, {}, 0, None, {}, wrong_background_share=1.0)
    for scene in drawn:
        told = always.misdescribed(scene, rng)
        taken = set(scene.background) | {shape.colour for shape in scene.shapes}
        assert told.shapes == scene.shapes and told.split == scene.split
        assert len(told.background) == len(scene.background) and not set(told.background) & taken
    assert any(len(scene.background) == 2 for scene in drawn)  # split backgrounds were covered too
    fifth = TrainingPictures({}, {}, 0, None, {}, wrong_background_share=0.2)
    changed = sum(fifth.misdescribed(scene, rng) != scene for scene in drawn) / len(drawn)
    assert 0.13 < changed < 0.27
    # Without a share: the scene itself and no random draws, so stage 3 and earlier polishes replay.
    never = TrainingPictures({}, {}, 0, None, {})
    state = rng.getstate()
    assert all(never.misdescribed(scene, rng) is scene for scene in drawn) and rng.getstate() == state


def test_the_polish_stage_trains_copies_and_replays_from_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    models = (architecture.build_unet().requires_grad_(False), architecture.build_text_encoder().requires_grad_(False))
    before = [p.clone() for p in models[0].parameters()]
    rng = random.Random(0)
    pictures = [scenes.random_scene(rng) for _ in range(8)]
    data = {"scenes": pictures, "mean": torch.randn(8, 4, 16, 16), "std": torch.full((8, 4, 16, 16), 0.1)}
    recipe = Recipe(steps=0, batch=4, anchor_warmup=0, anchor_share=0.0, high_timestep=700, high_only=0, high_share=0.4)
    polish = Polish(steps=2, lr=1e-3, blind_below=400, low_share=0.5, blind_share=0.5, shape_weight=4.0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    empty = encode_dataset(tmp_path / "anchors.pt", None, 0, 0)  # --anchors 0
    checkpoint = tmp_path / "polish.pt"

    unet, text_encoder = polish_denoiser(checkpoint, data, empty, tokenizer, models, recipe, polish, seed=5)

    assert all(torch.equal(a, b) for a, b in zip(before, models[0].parameters(), strict=True))  # stage 3's kept
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters(), strict=True))  # polished
    assert checkpoint.exists()
    # Another seed would train other weights: the same ones back means they came from the checkpoint.
    again, _ = polish_denoiser(checkpoint, data, empty, tokenizer, models, recipe, polish, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), again.parameters(), strict=True))
    even, _ = polish_denoiser(tmp_path / "even.pt", data, empty, tokenizer, models, recipe,
                              replace(polish, shape_weight=1.0), seed=5)  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(even.parameters(), unet.parameters(), strict=True))
    misdescribed, _ = polish_denoiser(tmp_path / "backgrounds.pt", data, empty, tokenizer, models, recipe,
                                      replace(polish, wrong_background_share=0.5), seed=5)  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(misdescribed.parameters(), unet.parameters(), strict=True))
    unpolished = replace(polish, steps=0)
    assert polish_denoiser(tmp_path / "none.pt", data, empty, tokenizer, models, recipe, unpolished, 5) == models


def test_stage_3_weighs_shapes_when_its_recipe_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "sample_grid", lambda *args: None)  # 20-step pictures: not the point
    rng = random.Random(0)
    pictures = [scenes.random_scene(rng) for _ in range(8)]
    data = {"scenes": pictures, "mean": torch.randn(8, 4, 16, 16), "std": torch.full((8, 4, 16, 16), 0.1)}
    empty = encode_dataset(tmp_path / "anchors.pt", None, 0, 0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    recipe = Recipe(steps=2, batch=4, anchor_warmup=0, anchor_share=0.0, high_timestep=700, high_only=0,
                    high_share=0.4, shape_weight=4.0)  # fmt: skip
    trained = {}
    for name, weight in (("shapes", 4.0), ("even", 1.0), ("shapes-again", 4.0)):
        (tmp_path / name).mkdir()
        unet, _ = train_denoiser(tmp_path / name, data, empty, tokenizer, None, replace(recipe, shape_weight=weight), 2)
        trained[name] = list(unet.parameters())
    assert all(torch.equal(a, b) for a, b in zip(trained["shapes"], trained["shapes-again"], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(trained["shapes"], trained["even"], strict=True))


def test_shape_weights_put_the_factor_on_each_shapes_box_and_average_one():
    small = scenes.Scene((scenes.Shape("triangle", "red", "small", "top left"),), ("blue",))
    large = scenes.Scene((scenes.Shape("square", "red", "large", "centre"),), ("blue",))
    two = scenes.Scene(small.shapes + (scenes.Shape("circle", "red", "small", "bottom right"),), ("blue",))
    weights = shape_weights([small, large, two], 4.0, 16)
    assert weights.shape == (3, 16, 16)
    assert torch.allclose(weights.mean(dim=(1, 2)), torch.ones(3))
    for picture in weights:
        assert torch.allclose(picture.max() / picture.min(), torch.tensor(4.0))
    # A small shape's box in the top left corner: rows and columns 0 to 6 (centre 3.2, half 2.88).
    heavy = weights[0] > weights[0].min()
    assert heavy[:7, :7].all() and heavy.sum() == 49
    assert weights[1][8, 8] > weights[1][0, 0] and (weights[1] > weights[1].min()).sum() > 49  # large: more
    assert (weights[2] > weights[2].min())[-3:, -3:].all() and (weights[2] > weights[2].min()).sum() == 98
    assert torch.equal(shape_weights([small], 1.0, 16), torch.ones(1, 16, 16))


def test_pixel_weights_of_one_leave_the_loss_as_it_was_and_others_move_it(batch):
    _, plain = timesteps_drawn(batch)
    ones = torch.ones(64, 16, 16)
    assert timesteps_drawn(batch, 0, 1.0, 0, 0.0, 1.0, ones)[1] == pytest.approx(plain, rel=1e-5)
    corner = torch.ones(64, 16, 16)
    corner[:, :4, :4] = 10.0
    corner /= corner.mean(dim=(1, 2), keepdim=True)
    assert timesteps_drawn(batch, 0, 1.0, 0, 0.0, 1.0, corner)[1] != pytest.approx(plain, rel=1e-3)
