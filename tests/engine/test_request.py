import random
import re

import pytest

from desktop.engine.backends.schedulers import (
    SAMPLER_NAMES,
    SAMPLERS,
    canonical_sampler,
    sampler_for_scheduler,
)
from desktop.engine.errors import InvalidRequest
from desktop.engine.request import (
    IP_ADAPTER_PREPROCESSOR,
    MAX_REFERENCE_IMAGES,
    ControlUnit,
    GenerationRequest,
    LayoutBox,
    LoraRef,
)


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
        ({"seed": 2**64}, "out of range"),
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
    # In its control units and layout boxes too (a field a newer Marble saves is left out, not refused).
    unit = {"model": "canny", "image": "c.png", "weight": 0.5, "from_a_newer_version": 1}
    box = {"description": "a fox", "left": 0, "top": 0, "right": 1, "bottom": 1, "from_a_newer_version": 1}
    read = GenerationRequest.from_dict(data | {"controls": [unit], "layout_boxes": [box]})
    assert read.controls == (ControlUnit("canny", "c.png", 0.5),)
    assert read.layout_boxes == (LayoutBox("a fox", 0, 0, 1, 1),)
    for field, label, item in (("controls", "control units", unit), ("layout_boxes", "layout boxes", box)):
        with pytest.raises(InvalidRequest, match=f"lists its {label} in an unknown form"):
            GenerationRequest.from_dict(data | {field: item})  # one item, not a list


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
    assert sampler_for_scheduler("PNDMScheduler", {"skip_prk_steps": True}) == "PLMS"  # SD 1.x's config
    assert sampler_for_scheduler("PNDMScheduler", {}) is None  # Runge-Kutta warm-up steps: not A1111's PLMS
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


# The tests below were written to kill mutants that survived `mutmut run` (docs/mutation.md).

# (field, lowest allowed, highest allowed, the message's name for it, the range it states)
RANGES = [
    ("width", 64, 4096, "width", "use 64 to 4096 pixels"),
    ("height", 64, 4096, "height", "use 64 to 4096 pixels"),
    ("steps", 1, 150, "steps", "use 1 to 150"),
    ("seed", 0, 2**64 - 1, "seed", "use 0 to 18446744073709551615, or -1 for random"),
    ("batch_size", 1, 8, "batch size", "use 1 to 8"),
    ("batch_count", 1, 100, "batch count", "use 1 to 100"),
    ("clip_skip", 1, 12, "clip skip", "use 1 to 12"),
    ("mask_blur", 0, 256, "mask blur", "use 0 to 256 pixels"),
    ("padding", 0, 1024, "padding", "use 0 to 1024 pixels"),
]


@pytest.mark.parametrize(("field", "low", "high", "label", "advice"), RANGES)
def test_every_whole_number_range_includes_both_ends_and_names_itself(field, low, high, label, advice):
    step = 8 if field in ("width", "height") else 1  # sides come in multiples of 8
    for value in (low, high):
        make(**{field: value}).validate()
    below = -2 if field == "seed" else low - step  # seed -1 means "random"
    for value in (below, high + step):
        with pytest.raises(InvalidRequest) as caught:
            make(**{field: value}).validate()
        assert str(caught.value) == f"{label} {value} is out of range: {advice}."
    with pytest.raises(InvalidRequest) as caught:
        make(**{field: 1.5}).validate()
    assert str(caught.value) == f"{label} must be a whole number, not 1.5."


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": None}, "The prompt must be text."),
        ({"negative_prompt": 3}, "The prompt must be text."),
        ({"model": ""}, "No model is selected: pick a model or pass --model."),
        ({"cfg_scale": 30.5}, "CFG scale 30.5 is out of range: use 0 to 30."),
        ({"cfg_scale": "7"}, "CFG scale 7 is out of range: use 0 to 30."),
        ({"device": "tpu"}, "Unknown device 'tpu': use one of auto, cpu, cuda, mps."),
        ({"sampler": "Euler b"}, f"Unknown sampler 'Euler b'. Known samplers: {', '.join(SAMPLER_NAMES)}."),
        ({"precision": "fp8"}, "Unknown precision 'fp8': use one of auto, fp32, fp16, bf16."),
        ({"memory_mode": "max"}, "Unknown memory mode 'max': use one of auto, full, tiled, offload, group, sequential, "
         "fp8, nf4, int8."),
        ({"fast_mode": 1}, "fast mode must be true or false, not 1."),
        ({"loras": ("detail",)}, "A LoRA entry must name a LoRA and a weight, not 'detail'."),
        ({"loras": (LoraRef("x", -5.5),)}, "LoRA 'x' weight -5.5 is out of range: use -5 to 5."),
        ({"strength": -0.1}, "strength -0.1 is out of range: use 0 to 1."),
        ({"mask": "/tmp/m.png"}, "A mask needs a source image to inpaint (--init-image)."),
        ({"inpaint_area": "all"}, "Unknown inpaint area 'all': use one of whole, masked."),
        ({"resize_mode": "crop"}, "Unknown resize mode 'crop': use one of resize, pad."),
        (
            {"init_image": "/tmp/a.png", "strength": 0.3, "steps": 3},
            "At strength 0.3, 3 step(s) leave no step to run: use at least 4 steps or a higher strength.",
        ),
    ],
)
def test_each_message_is_the_whole_sentence_a_user_reads(changes, message):
    with pytest.raises(InvalidRequest) as caught:
        make(**changes).validate()
    assert str(caught.value) == message


def test_limits_that_are_allowed():
    make(prompt="x" * 100_000, cfg_scale=0, steps=150).validate()
    make(cfg_scale=30.0, loras=(LoraRef("x", -5.0), LoraRef("y", 5.0))).validate()
    # Strength 0 and 1 are both allowed; one step at strength 0.5 of 2 still runs.
    make(init_image="/tmp/a.png", strength=0.0, steps=1).validate()
    make(init_image="/tmp/a.png", strength=1.0).validate()
    make(init_image="/tmp/a.png", strength=0.5, steps=2).validate()
    # Without a source image strength is not used, so a tiny one is no problem.
    make(strength=0.01, steps=1).validate()
    with pytest.raises(InvalidRequest, match="The prompt is 100,001"):
        make(prompt="x" * 100_001).validate()


def test_a_random_seed_is_drawn_without_a_given_generator():
    seeds = {make(seed=-1).with_seed().seed for _ in range(3)}
    assert all(0 <= seed <= 2**32 - 1 for seed in seeds)


def test_saved_requests_are_read_with_care():
    saved = make().to_dict()
    # A1111 names in any case come back canonical; an unknown sampler stays, for validate to name.
    assert GenerationRequest.from_dict(saved | {"sampler": "euler a"}).sampler == "Euler a"
    assert GenerationRequest.from_dict(saved | {"sampler": "Mystery"}).sampler == "Mystery"
    assert GenerationRequest.from_dict({"prompt": "p", "model": "m"}).sampler == make().sampler
    loras = GenerationRequest.from_dict(saved | {"loras": [{"name": "a"}, LoraRef("b", 0.5)]}).loras
    assert loras == (LoraRef("a", 1.0), LoraRef("b", 0.5))
    for data, message in [
        ({"model": "m"}, "The saved request is incomplete: "),
        (saved | {"loras": "a"}, "The saved request lists its LoRAs in an unknown form."),
        (saved | {"loras": [{"weight": 1}]}, "The saved request has an unreadable LoRA entry: {'weight': 1}."),
        (saved | {"loras": ["a"]}, "The saved request has an unreadable LoRA entry: 'a'."),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            GenerationRequest.from_dict(data)
        assert str(caught.value).startswith(message)


# Found by a mutation sweep of request.py's validation (2026-12-07): each case passed with its check removed.
_UPSCALE = {"init_image": "photo.png", "upscale_by": 2.0}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"controls": (ControlUnit(model="canny\x00", image="edges.png"),)}, "Control unit 0 needs a control model"),
        ({"controls": (ControlUnit(model="c" * 201, image="edges.png"),)}, "control model name is too long"),
        ({"controls": (ControlUnit(model="ipa", image="a.png", preprocessor=IP_ADAPTER_PREPROCESSOR,
                                   more_images=("b.png",) * MAX_REFERENCE_IMAGES),)},
         f"use at most {MAX_REFERENCE_IMAGES} reference images"),
        ({"distilled_cfg_scale": 30.5}, "Distilled CFG scale 30.5 is out of range: use 0 to 30"),
        (_UPSCALE | {"upscale_by": 8.5}, "upscale factor 8.5 is out of range: use 1 to 8"),
        (_UPSCALE | {"mask": "mask.png"}, "An upscale needs a source image and no mask"),
        (_UPSCALE | {"upscale_tile": 4104}, "upscale tile 4104 is out of range"),
        (_UPSCALE | {"batch_size": 2}, "An upscale makes one image"),
        (_UPSCALE | {"sd_upscale": True, "sd_upscale_tile": 516}, "SD upscale tile 516 must be a multiple of 8"),
        (_UPSCALE | {"sd_upscale": True, "strength": 0.0}, "SD upscale denoising strength 0 is out of range"),
        ({"refiner": "xl-refiner", "init_image": "photo.png"}, "The refiner runs after text-to-image only"),
        ({"refiner": "xl-refiner", "steps": 2, "refiner_switch_at": 0.4}, "leaves the base model no step"),
        ({"hires_fix": True, "hires_resize_w": 32}, "hires resize width 32 is out of range"),
        ({"hires_fix": True, "hires_steps": 10_000}, "hires steps 10000 is out of range"),
    ],
)
def test_every_check_of_the_rarer_settings_names_its_problem(changes, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        make(**changes).validate()


def test_the_rarer_settings_take_their_edges():
    for changes in ({"distilled_cfg_scale": 30.0}, _UPSCALE | {"upscale_by": 8.0, "upscale_tile": 4096},
                    _UPSCALE | {"sd_upscale": True, "sd_upscale_tile": 64, "sd_upscale_overlap": 32, "strength": 1.0},
                    {"hires_fix": True, "hires_resize_w": 64, "hires_steps": 150},
                    {"controls": (ControlUnit(model="ipa", image="a.png", preprocessor=IP_ADAPTER_PREPROCESSOR,
                                              more_images=("b.png",) * (MAX_REFERENCE_IMAGES - 1)),)}):  # fmt: skip
        make(**changes).validate()
