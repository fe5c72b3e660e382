"""The demo model's training pieces that the build's recipe rests on: anchor scenes and the timestep mix.

The build itself takes most of an hour (a build step, not CI); these check what it is made of."""

from __future__ import annotations

import random

import pytest
import torch

from installer.demo_model import architecture, scenes
from installer.demo_model.train import anchor_scene, draw_batch, encode_dataset
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

    def forward(self, sample, timestep, hidden):
        self.timesteps += timestep.tolist()
        return self.unet(sample, timestep, hidden)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(64, 4, 16, 16), torch.randn(64, 77, architecture.TEXT_CONFIG["hidden_size"])


def timesteps_drawn(batch, *mix) -> tuple[list[int], float]:
    unet = RecordingUNet()
    with torch.no_grad():
        loss = diffusion_loss(unet, *batch, training_schedule(), torch.Generator().manual_seed(1), *mix)
    return unet.timesteps, float(loss)


def test_timesteps_are_uniform_by_default_and_the_default_draws_are_unchanged(batch):
    steps, loss = timesteps_drawn(batch)
    assert min(steps) < 200 and max(steps) > 800
    # No lowest timestep: the random stream of the uniform recipe (noise, then timesteps) and no extra
    # draws, so the tests' LoRA training and the earlier builds replay exactly.
    generator = torch.Generator().manual_seed(1)
    torch.randn(batch[0].shape, generator=generator)
    assert steps == torch.randint(0, 1000, (64,), generator=generator).tolist()
    assert (steps, loss) == timesteps_drawn(batch, 0, 0.3)


def test_a_share_of_the_timesteps_comes_from_high_noise(batch):
    everything_high, _ = timesteps_drawn(batch, 700)
    assert min(everything_high) >= 700
    mixed, _ = timesteps_drawn(batch, 700, 0.5)
    high = sum(step >= 700 for step in mixed) / len(mixed)
    assert 0.5 < high < 0.9  # half drawn from 700 up, plus the uniform half's 30%
    assert min(mixed) < 700
