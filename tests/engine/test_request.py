import random

import pytest

from desktop.engine.backends.schedulers import (
    SAMPLER_NAMES,
    SAMPLERS,
    canonical_sampler,
    sampler_for_scheduler,
)
from desktop.engine.errors import InvalidRequest
from desktop.engine.request import GenerationRequest


def make(**changes):
    values = {"prompt": "a red fox", "model": "tiny"} | changes
    return GenerationRequest(**values)


def test_defaults_are_valid():
    assert make().validate() == make()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 513}, "width 513 is not a multiple of 8 (try 512 or 520)"),
        ({"height": 100}, "height 100 is not a multiple of 8"),
        ({"width": 8}, "width 8 is out of range"),
        ({"height": 8192}, "height 8192 is out of range"),
        ({"steps": 0}, "steps 0 is out of range"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"cfg_scale": -1}, "CFG scale -1 is out of range"),
        ({"sampler": "Euler b"}, "Unknown sampler 'Euler b'"),
        ({"model": " "}, "No model is selected"),
        ({"seed": -5}, "seed -5 is out of range"),
        ({"seed": 2**40}, "out of range"),
        ({"batch_size": 0}, "batch size 0 is out of range"),
        ({"batch_count": 1000}, "batch count 1000 is out of range"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"precision": "fp8"}, "Unknown precision 'fp8'"),
        ({"emphasis": "no norm"}, "Unknown emphasis 'no norm': use one of Original, No norm, None"),
        ({"prompt": "x" * 100_001}, "The prompt is 100,001 characters long"),
        ({"negative_prompt": "a\x00b"}, "negative prompt contains a NUL"),
        ({"steps": True}, "steps must be a whole number"),
    ],
)
def test_validation_names_the_problem(changes, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(**changes).validate()


def test_random_seed_is_drawn_once_and_batch_seeds_follow_a1111():
    request = make(seed=-1, batch_size=2, batch_count=3).with_seed(random.Random(7))
    assert 0 <= request.seed <= 2**32 - 1
    assert request.with_seed() is request
    seeds = [request.seed_for(b, k) for b in range(3) for k in range(2)]
    assert seeds == list(range(request.seed, request.seed + 6))


def test_dict_round_trip_ignores_unknown_keys():
    request = make(seed=42, sampler="DPM++ 2M Karras", negative_prompt="blurry")
    data = request.to_dict() | {"from_a_newer_version": 1}
    assert GenerationRequest.from_dict(data) == request


def test_every_sampler_name_is_canonical():
    for name in SAMPLER_NAMES:
        assert canonical_sampler(name) == name
        assert canonical_sampler(f"  {name.lower()} ") == name


def test_both_a1111_karras_spellings():
    assert canonical_sampler("DPM++ 2M Karras") == "DPM++ 2M Karras"
    assert canonical_sampler("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert canonical_sampler("DPM++ 2M", "Automatic") == "DPM++ 2M"
    assert canonical_sampler("Euler x") is None
    assert SAMPLERS["DPM++ 2M Karras"].base_name == "DPM++ 2M"


def test_default_scheduler_maps_back_to_its_a1111_name():
    assert sampler_for_scheduler("PNDMScheduler", {}) == "PLMS"
    assert sampler_for_scheduler("EulerDiscreteScheduler", {"use_karras_sigmas": False}) == "Euler"
    dpm = {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}
    assert sampler_for_scheduler("DPMSolverMultistepScheduler", dpm) == "DPM++ 2M Karras"
    assert sampler_for_scheduler("FlowMatchEulerDiscreteScheduler", {}) is None


def test_loras_and_image_inputs_validate_and_round_trip():
    from desktop.engine.request import LoraRef

    request = make(
        loras=(LoraRef("detail", 0.8), LoraRef("style", -1.0)),
        init_image="/tmp/src.png",
        mask="/tmp/mask.png",
        strength=0.6,
        inpaint_area="masked",
    ).validate()
    assert request.mode == "inpaint" and make().mode == "txt2img"
    assert make(init_image="/tmp/a.png").mode == "img2img"
    assert GenerationRequest.from_dict(request.to_dict()) == request
    for changes, message in [
        ({"loras": (LoraRef("x", 9.0),)}, "LoRA 'x' weight 9.0 is out of range"),
        ({"loras": (LoraRef("a\x00b"),)}, "is not a valid name"),
        ({"strength": 1.5}, "strength 1.5 is out of range"),
        ({"mask": "/tmp/m.png"}, "A mask needs a source image"),
        ({"inpaint_area": "all"}, "Unknown inpaint area 'all'"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            make(**changes).validate()
