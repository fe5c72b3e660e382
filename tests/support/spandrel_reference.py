"""An independent reference for Marble's upscalers: spandrel 0.4.2 (chaiNNer's maintained loader), run in one
child process for the whole test session.

spandrel imports torchvision at import time (for LaMa and RestoreFormer only), and Marble's venv has no
torchvision (PyPI's build breaks beside the CPU torch): the child puts a stub `torchvision` with the three
names those two modules import on sys.path first. The architectures compared here never touch it.

The child builds each tiny model by instantiating spandrel's own architecture class with small
hyper-parameters and seeded random weights (so the key layout is the real one), saves its state dict as
safetensors, loads that file back through spandrel's ModelLoader (its detection, not the class it was
built from), runs a fixed input and saves the output and what spandrel recognised. The parent loads the
same file through Marble's library and compares.

spandrel is a test-only dependency installed without its dependencies (`pip install --no-deps
spandrel==0.4.2`, in .ci/run); `available()` says whether it is there.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

STUB = '''
class InterpolationMode:  # stub: spandrel's LaMa imports it, the tests never run LaMa
    NEAREST = BILINEAR = BICUBIC = None


def rotate(*args, **kwargs):
    raise RuntimeError("torchvision stub")


def normalize(*args, **kwargs):
    raise RuntimeError("torchvision stub")
'''

# Real-CUGAN is one spandrel architecture of four classes: a spec's "scale" and "fast" pick the class.
_CUGAN = {(2, False): "UpCunet2x", (3, False): "UpCunet3x", (4, False): "UpCunet4x", (2, True): "UpCunet2x_fast"}


def available() -> bool:
    # find_spec does not import spandrel (whose import would need torchvision).
    return importlib.util.find_spec("spandrel") is not None and importlib.util.find_spec("einops") is not None


def build_and_run(workdir: Path, specs: dict[str, dict]) -> dict[str, dict]:
    """For each spec name: NAME.safetensors, NAME.input.npy, NAME.output.npy in `workdir`; returns what
    spandrel recognised per name ({"architecture": id, "scale": n})."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "specs.json").write_text(json.dumps(specs), encoding="utf-8")
    reply = _Child.get().ask(str(workdir))
    if reply != "ok":
        raise RuntimeError(f"the spandrel child failed:\n{reply[-3000:]}")
    return json.loads((workdir / "report.json").read_text(encoding="utf-8"))


class _Child:
    """One child process for the whole test session: it imports torch and spandrel once (a few seconds each
    time on this machine, and about 40 test modules ask), then builds and runs each module's specs in turn.
    Every spec seeds its own random numbers, so the order of requests changes nothing."""

    _running: _Child | None = None

    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="spandrel-child-"))
        stub = folder / "stub" / "torchvision" / "transforms"
        stub.mkdir(parents=True)
        for package in (stub.parent, stub):
            (package / "__init__.py").write_text("", encoding="utf-8")
        (stub / "functional.py").write_text(STUB, encoding="utf-8")
        self._log = (folder / "stderr.log").open("w+", encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), str(folder / "stub")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        atexit.register(self._process.kill)

    @classmethod
    def get(cls) -> _Child:
        if cls._running is None or cls._running._process.poll() is not None:
            cls._running = cls()
        return cls._running

    def ask(self, workdir: str) -> str:
        """Send a work folder; the child's one-line answer ("ok" or what went wrong), within ten minutes."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(workdir + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], 600)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            self._process.kill()
            self._log.seek(0)
            return "no answer from the child; its stderr:\n" + self._log.read()[-3000:]
        return json.loads(line)


def _randomise(model) -> None:  # noqa: ANN001 - torch is the child's only
    """Seeded random weights large enough that every part matters: attention scores and position
    biases far from uniform, norms away from identity."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            # FDAT's window bias is a full (heads, N, N) table, its temperature `temp`.
            if name.endswith("relative_position_bias_table") or (name.endswith(".bias") and param.dim() == 3):
                param.normal_(0.0, 1.0)
            elif name.endswith("logit_scale"):
                param.uniform_(1.0, 6.0)  # some heads past Swin2SR's cap, log(100) ~ 4.6, so the clamp matters
            elif name.endswith(("temperature", ".temp")):
                param.uniform_(0.5, 2.0)
            elif param.dim() >= 2:
                param.normal_(0.0, 1.0 / param[0].numel() ** 0.5)
            elif name.endswith("weight"):  # LayerNorm and BatchNorm scales
                param.normal_(1.0, 0.2)
            else:
                param.normal_(0.0, 0.1)
        for name, buffer in model.named_buffers():
            # BatchNorm's statistics, so that evaluation mode (running statistics) is what is compared.
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)


def _serve(stub: Path) -> None:
    """The child: set up once, then for each work folder read from stdin build and run its specs and answer
    with one JSON line. Library output goes to stderr: stdout carries the answers only."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    sys.path.insert(0, str(stub))
    run = _setup()
    for line in sys.stdin:
        try:
            run(Path(line.strip()))
            answer = "ok"
        except Exception:  # noqa: BLE001 - told to the parent, which fails the test with it
            answer = traceback.format_exc()
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def _setup():  # noqa: ANN202 - torch is the child's only
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from spandrel import ModelLoader
    from spandrel.__helpers.size_req import pad_tensor
    from spandrel.architectures import (
        ATD,
        CRAFT,
        DAT,
        DCTLSA,
        DITN,
        DRCT,
        FBCNN,
        FDAT,
        GRL,
        HAT,
        IPT,
        PLKSR,
        RCAN,
        RGT,
        SAFMN,
        SAFMNBCIE,
        SPAN,
        AuraSR,
        DnCNN,
        DRUNet,
        FFTformer,
        HVICIDNet,
        KBNet,
        MixDehazeNet,
        MMRealSR,
        MoESR,
        MoSR,
        NAFNet,
        OmniSR,
        RealCUGAN,
        RetinexFormer,
        SCUNet,
        SeemoRe,
        SwiftSRGAN,
        Swin2SR,
        SwinIR,
        Uformer,
    )

    # spandrel's FDAT DySample asks for pinned memory, which a CPU-only torch refuses: the child drops the flag.
    make_tensor = torch.tensor
    torch.tensor = lambda *args, pin_memory=False, **kwargs: make_tensor(*args, **kwargs)

    # One entry per line: several architectures are added at the same time.
    classes = {
        "SwinIR": SwinIR.SwinIR, "DAT": DAT.DAT, "HAT": HAT.HAT, "SPAN": SPAN.SPAN, "PLKSR": PLKSR.PLKSR,
        "RealPLKSR": PLKSR.RealPLKSR, "OmniSR": OmniSR.OmniSR, "Swin2SR": Swin2SR.Swin2SR,
        "DRCT": DRCT.DRCT, "RGT": RGT.RGT,
        "ATD": ATD.ATD,
        "SAFMN": SAFMN.SAFMN,
        "SAFMNBCIE": SAFMNBCIE.SAFMNBCIE,
        "DITN": DITN.DITN,
        "RCAN": RCAN.RCAN,
        "SwiftSRGAN": SwiftSRGAN.SwiftSRGAN,
        "CRAFT": CRAFT.CRAFT,
        "MoSR": MoSR.MoSR,
        "SeemoRe": SeemoRe.SeemoRe,
        "MoESR": MoESR.MoESR,
        "SCUNet": SCUNet.SCUNet,
        "DnCNN": DnCNN.DnCNN,
        "DRUNet": DRUNet.DRUNet,
        "FDAT": FDAT.FDAT,
        "DCTLSA": DCTLSA.DCTLSA,
        "GRL": GRL.GRL,
        "RetinexFormer": RetinexFormer.RetinexFormer,
        "HVICIDNet": HVICIDNet.HVICIDNet,
        "MixDehazeNet": MixDehazeNet.MixDehazeNet,
        "NAFNet": NAFNet.NAFNet,
        "FBCNN": FBCNN.FBCNN,
        "KBNet_s": KBNet.KBNet_s,
        "KBNet_l": KBNet.KBNet_l,
        "AuraSR": AuraSR.AuraSR,
        "FFTformer": FFTformer.FFTformer,
        "Uformer": Uformer.Uformer,
        "MMRealSR": MMRealSR.MMRealSR,
        "IPT": IPT.IPT,
    }  # fmt: skip
    classes |= {"RealCUGAN": lambda scale, fast=False, **kwargs: getattr(RealCUGAN, _CUGAN[scale, fast])(**kwargs)}
    return functools.partial(_run, classes, np, torch, save_file, ModelLoader, pad_tensor)


def _run(classes, np, torch, save_file, ModelLoader, pad_tensor, workdir: Path) -> None:  # noqa: ANN001, N803
    specs = json.loads((workdir / "specs.json").read_text(encoding="utf-8"))
    report = {}
    for name, spec in specs.items():
        torch.manual_seed(spec["seed"])
        model = classes[spec["class"]](**spec["kwargs"])
        # Parameters a spec keeps as the class made them (IPT's mean shifts, from which spandrel reads its range).
        kept = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(tuple(spec.get("keep", ())))}
        _randomise(model)
        model.load_state_dict(kept, strict=False)
        with torch.no_grad():  # a deep plain ReLU stack (DnCNN) halves its signal's power per layer without a gain
            for param in model.parameters():
                param.mul_(spec.get("gain", 1.0) if param.dim() == 4 else 1.0)
        path = workdir / f"{name}.safetensors"
        state = model.state_dict()
        if spec.get("buffers"):  # the derived buffers too, as some published files (GRL's) carry them
            state = dict(model.named_buffers()) | state
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
        loaded = ModelLoader().load_from_file(str(path))
        height, width = spec["input"]
        image = np.random.default_rng(spec["seed"]).random((1, 3, height, width), dtype=np.float32)
        if "call_seed" in spec:  # a network that draws random numbers as it runs (AuraSR): the draws fixed
            torch.manual_seed(spec["call_seed"])
        with torch.no_grad():
            # A copy: RCAN scales its input in place, which would change the input saved below.
            source = torch.from_numpy(image.copy())
            if spec.get("padded"):
                # Padded as spandrel's descriptor pads for the model's size requirement, without its clamp.
                source = pad_tensor(source, loaded.size_requirements)[1]
            if spec.get("signed"):
                # Trained on -1..1 values (MixDehazeNet): the input mapped in, the output back below, as published.
                source = source * 2 - 1
            # Through spandrel's own call (its default noise-level map for FDnCNN and DRUNet), unclamped; a
            # grey model ("per_channel") sees the colour input's channels one by one, as Marble runs it. A
            # signed model runs bare: spandrel's call for it maps only the output, which is mapped below.
            model = loaded.model.eval()
            for module in model.modules():
                # Uformer's conv projection passes its bias flag as the dilation (True, meaning 1), which this
                # torch's conv2d refuses: the value it stands for.
                if isinstance(module, torch.nn.Conv2d):
                    module.dilation = tuple(int(d) for d in module.dilation)
            run = model if spec.get("signed") else functools.partial(loaded._call_fn, model)
            if "forward" in spec:
                # Keyword arguments spandrel's call leaves at a default that does not fit the file (MMRealSR's
                # per-strength overrides: two by default, whatever the file's count): the network's own forward.
                run = lambda image, model=model, kwargs=spec["forward"]: model(image, **kwargs)[0]  # noqa: E731
            channels = source.split(1, 1) if spec.get("per_channel") else [source]
            output = torch.cat([run(channel) for channel in channels], 1)
            output = output[..., : height * loaded.scale, : width * loaded.scale].numpy()
            if spec.get("signed"):
                output = output * 0.5 + 0.5
        np.save(workdir / f"{name}.input.npy", image)
        np.save(workdir / f"{name}.output.npy", output)
        report[name] = {"architecture": loaded.architecture.id, "scale": loaded.scale}
    (workdir / "report.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
