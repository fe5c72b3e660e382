"""Image to image and inpainting over a flow-matching text-to-image pipeline, for the DiT families diffusers has no
such pipelines for (Qwen-Image 2.1, Lumina Image 2.0, Krea 2, ERNIE-Image, LongCat-Image): `FlowEdit`, mixed into the
family's pipeline class (`FluxLatentEdit` for those over Flux.1's kind of VAE).

Done as diffusers' flow-matching image-to-image pipelines do it (Flux's, Qwen-Image's), over the text-to-image
pipeline's own loop: the source's latents (in the transformer's space) are noised to the sigma where the last
`strength` of the schedule starts, `(1 - s) x0 + s noise` (the scheduler's `scale_noise`), and the pipeline runs
that tail of its schedule (its `sigmas=`: the scheduler shifts a schedule element by element, so the tail of the
unshifted one shifts to the tail of the shifted one). Strength 1 starts from the noise text to image draws for
the same seed, so it makes that picture. Inpainting puts the source, noised to the next sigma, back outside the
mask after every step (diffusers' inpainting pipelines' blend), so the last step leaves the source's latents
there; a latent cell with any masked pixel in it is repainted. `image` may be latents already, (B, C, h, w) in the
transformer's space (the hires fix's latent upscalers hand theirs over as they are).

A family's class supplies, beside its pipeline: `_edit_grid(width, height)` (latent rows, columns),
`_edit_raw_sigmas(steps)` (the schedule before shifting), `_edit_mu(rows, cols)` (the shift's argument, as its
pipeline computes it), `_edit_encode(picture, width, height, generator)` (one source's latents, (1, C, h, w)),
`_edit_pack(grid)` ((B, C, h, w) -> the pipeline's `latents=` layout) and `_edit_conditions(references)` (the
pipeline's arguments for reference pictures).

torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# noised(clean, noise, index): the source's latents noised to where the schedule's tail stands before its step `index`
# (its length: the end, the source itself), as the denoising loop holds its latents there.
Noised = Callable[[Any, Any, int], Any]


class FlowMix:
    """A flow-matching model's noising, `(1 - sigma) x0 + sigma noise` at the tail's sigmas."""

    @staticmethod
    def _edit_noiser(tail: Any) -> tuple[Noised, float]:
        """(noised, what the pipeline multiplies latents handed to it by: 1 for the flow-matching schedulers)."""

        def noised(clean: Any, noise: Any, index: int) -> Any:
            sigma = tail.sigmas[index]
            sigma = float(sigma) if index == 0 else sigma.to(clean.dtype)
            return (1 - sigma) * clean + sigma * noise

        return noised, 1.0


class VarianceEdit:
    """A noise-prediction model's noising (PixArt's DDPM training), whatever scheduler runs it: the scheduler's own
    `add_noise` at the tail's timesteps, which holds its latents as that scheduler does (DPM-Solver's
    `(x0 + sigma noise) / sqrt(sigma^2 + 1)`, Euler's `x0 + sigma noise`, DDIM's from its alphas). Listed before
    ScheduleTailEdit in a family's class."""

    @staticmethod
    def _edit_noiser(tail: Any) -> tuple[Noised, float]:
        """(noised, the tail's `init_noise_sigma`: the pipeline multiplies latents handed to it by that)."""
        import torch

        def noised(clean: Any, noise: Any, index: int) -> Any:
            if index >= len(tail.timesteps):
                return clean
            return tail.add_noise(clean, noise, torch.as_tensor(tail.timesteps[index : index + 1]))

        return noised, float(tail.init_noise_sigma)


class FlowEdit(FlowMix):
    """Image to image (a source, `strength`) and inpainting (`mask_image`: white is repainted) for the
    text-to-image pipeline class it is mixed into (listed before it)."""

    def __call__(
        self, *, image: Any, strength: float, width: int, height: int, mask_image: Any = None,
        references: Any = None, num_inference_steps: int = 30, num_images_per_prompt: int = 1, generator: Any = None,
        callback_on_step_end: Any = None, **rest: Any,
    ) -> Any:  # fmt: skip
        import numpy as np

        rows, cols = self._edit_grid(width, height)
        raw = np.asarray(self._edit_raw_sigmas(num_inference_steps), dtype=np.float64)
        tail = raw[tail_start(len(raw), strength) :].tolist()
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(sigmas=tail, mu=self._edit_mu(rows, cols), device=self._execution_device)
        latents, count, step_end = _noised_sources(self, image, self._edit_noiser(scheduler), False, width, height,
                                                   mask_image, num_images_per_prompt, generator,
                                                   callback_on_step_end)  # fmt: skip
        return super().__call__(  # type: ignore[misc]
            width=width, height=height, sigmas=tail, latents=latents, num_images_per_prompt=count,
            generator=generator, callback_on_step_end=step_end, **self._edit_conditions(references), **rest,
        )  # fmt: skip


class ScheduleTailEdit(FlowMix):
    """Image to image and inpainting as FlowEdit, for a text-to-image pipeline that makes its schedule itself from the
    step count and takes none (HiDream-I1's, AuraFlow's): the scheduler's `set_timesteps` is wrapped for the call to
    keep the tail of the very schedule text to image runs. A family's class supplies FlowEdit's `_edit_grid`,
    `_edit_encode` and `_edit_pack`, and `_edit_schedule(scheduler, steps, device)`: the schedule as its pipeline sets
    it."""

    def __call__(
        self, *, image: Any, strength: float, width: int, height: int, mask_image: Any = None,
        num_inference_steps: int = 50, num_images_per_prompt: int = 1, generator: Any = None,
        callback_on_step_end: Any = None, **rest: Any,
    ) -> Any:  # fmt: skip
        probe = type(self.scheduler).from_config(self.scheduler.config)
        self._edit_schedule(probe, num_inference_steps, self._execution_device)
        # A second-order scheduler's timesteps come in pairs: cut between them.
        order = getattr(probe, "order", 1)
        start = tail_start(-(-len(probe.timesteps) // order), strength) * order
        _cut(probe, start)
        # The whole schedule starts from the noise alone, as text to image does (UniPC's first sigma is a hair under
        # 1: the source would show through by a rounding).
        latents, count, step_end = _noised_sources(self, image, self._edit_noiser(probe), start == 0, width, height,
                                                   mask_image, num_images_per_prompt, generator,
                                                   callback_on_step_end)  # fmt: skip
        scheduler = self.scheduler
        made = scheduler.set_timesteps

        def tail(*args: Any, **kwargs: Any) -> None:
            made(*args, **kwargs)
            _cut(scheduler, start)

        scheduler.set_timesteps = tail
        try:
            return super().__call__(  # type: ignore[misc]
                width=width, height=height, latents=latents, num_inference_steps=num_inference_steps,
                num_images_per_prompt=count, generator=generator, callback_on_step_end=step_end, **rest,
            )  # fmt: skip
        finally:
            del scheduler.set_timesteps  # the class's method again


class KlVaeTailEdit(ScheduleTailEdit):
    """ScheduleTailEdit's parts for a pipeline that sets its schedule from the step count alone, over an AutoencoderKL
    whose latents are its mode scaled (no shift: SDXL's, SD 1.5's) and which reads them (C, h, w) as they are (its
    transformer patchifies them): AuraFlow's, PixArt's; Sana's with its DC-AE's encoding."""

    def _edit_schedule(self, scheduler: Any, steps: int, device: Any) -> None:
        scheduler.set_timesteps(steps, device=device)  # as its pipeline does

    def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
        pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
        latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def _edit_pack(self, grid: Any) -> Any:
        return grid


def tail_start(steps: int, strength: float) -> int:
    """The step of `steps` where an edit at `strength` starts: diffusers' image-to-image rule (the last
    min(steps x strength, steps) of the schedule, rounded as it rounds), at least one step run."""
    return min(int(max(steps - min(steps * strength, steps), 0)), steps - 1)


def tail_steps(steps: int, strength: float) -> int:
    """How many of `steps` an edit at `strength` runs (from `tail_start` to the end)."""
    return steps - tail_start(steps, strength)


def _cut(scheduler: Any, start: int) -> None:
    """A scheduler's schedule from its step `start` on (DDIM keeps timesteps only)."""
    scheduler.timesteps = scheduler.timesteps[start:]
    if getattr(scheduler, "sigmas", None) is not None:
        scheduler.sigmas = scheduler.sigmas[start:]


def _noised_sources(
    pipe: Any, image: Any, noiser: tuple[Noised, float], from_noise: bool, width: int, height: int, mask_image: Any,
    images: int, generator: Any, then: Any,
) -> tuple[Any, int, Any]:
    """(the latents the edit starts from, the batch size, the step-end callback): the sources' latents (`image`:
    pictures encoded by the pipeline's `_edit_encode`, or latents already) noised to the tail's start by `noiser`
    (`from_noise`: the noise alone), packed as the pipeline's latents; with a mask, the callback puts the source back
    outside it after every step."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    noised, scale = noiser
    generators = generator if isinstance(generator, list) else [generator]
    count = max(len(generators), images)
    device, dtype = pipe._execution_device, pipe.vae.dtype
    rows, cols = pipe._edit_grid(width, height)
    if torch.is_tensor(image):
        clean = image.to(device, dtype)
    else:
        sources = image if isinstance(image, list) else [image]
        with torch.no_grad():
            encoded = [pipe._edit_encode(picture, width, height, generators[min(k, len(generators) - 1)])
                       for k, picture in enumerate(sources)]  # fmt: skip
        clean = torch.cat(encoded).to(device, dtype)
    clean = clean.repeat(count, 1, 1, 1) if clean.shape[0] == 1 else clean
    # Drawn as text to image draws its noise for the same generators (the same values in the same order).
    channels = clean.shape[1]
    noise = randn_tensor((count, channels, rows, cols), generator=generator, device=device, dtype=dtype)
    clean, noise = pipe._edit_pack(clean), pipe._edit_pack(noise)
    step_end = then
    if mask_image is not None:
        # On every latent channel, packed as the latents are (a 2x2-patch token holds four cells).
        repaint = pipe._edit_pack(latent_mask(mask_image, rows, cols).repeat(1, channels, 1, 1)).to(device, dtype)
        step_end = blended(clean, noise, repaint, then, noised)
    # Handed over divided by what the pipeline multiplies them by (Euler's first sigma; 1 for most).
    return (noise if from_noise else noised(clean, noise, 0) / scale), count, step_end



class FluxLatentEdit(FlowEdit):
    """FlowEdit's parts for a pipeline over Flux.1's kind of VAE (AutoencoderKL: a source's latents are its mode,
    shifted and scaled) on a grid of 2x2 patches, with a linear schedule before shifting and no reference pictures
    (Lumina Image 2.0, LongCat-Image). The family's class gives `_edit_mu` (through `_edit_shift`) and `_edit_pack`."""

    def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
        cell = self.vae_scale_factor * 2
        return 2 * (height // cell), 2 * (width // cell)

    def _edit_raw_sigmas(self, steps: int) -> Any:
        import numpy as np

        return np.linspace(1.0, 1 / steps, steps)

    def _edit_shift(self, tokens: int) -> float:
        """The shift's argument for `tokens` under the scheduler's settings (Flux's rule, which these pipelines
        copy)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler.config
        return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip

    def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
        pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
        latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def _edit_conditions(self, references: Any) -> dict[str, Any]:
        return {}

def latent_mask(mask: Any, rows: int, cols: int) -> Any:
    """(1, 1, rows, cols): 1 where a latent cell holds any masked (white) pixel."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return (torch.nn.functional.adaptive_max_pool2d(pixels, (rows, cols)) >= 0.5).float()


def blended(clean: Any, noise: Any, repaint: Any, then: Any, noised: Noised) -> Any:
    """A step-end callback that puts the source back outside the mask, then calls `then` (Marble's own)."""

    def step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        known = noised(clean, noise, i + 1)  # where the step landed
        tensors = {**tensors, "latents": repaint * tensors["latents"] + (1 - repaint) * known}
        outputs = then(pipeline, i, t, tensors) if then is not None else {}
        return {"latents": tensors["latents"], **(outputs or {})}

    return step_end
