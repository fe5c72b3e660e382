"""Preview colour tables fitted from an autoencoder with no published one (preview_fit.py): the least-squares fit
itself, its calibration pictures, and the fit from a real (tiny) autoencoder. The Sana jobs that use it are in
test_sana.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desktop.engine.backends.preview import ColourTable, colour_table, fit_colour_table, latents_to_rgb
from desktop.engine.backends.preview_fit import (
    CELLS,
    PICTURES,
    FitStopped,
    FitWatch,
    cached_fit,
    calibration_pictures,
    fingerprint,
    fit_from_autoencoder,
)
from tests.support.tiny_sana import build_tiny_sana


def test_the_fit_recovers_a_linear_map_and_its_offset():
    rng = np.random.default_rng(0)
    factors = rng.normal(scale=0.1, size=(32, 3)).astype(np.float32)
    bias = np.array([0.2, -0.1, 0.05], dtype=np.float32)
    latents = rng.normal(size=(200, 32)).astype(np.float32)
    table = fit_colour_table(latents, latents @ factors + bias, "test")
    assert np.allclose(table.factors, factors, atol=2e-3) and np.allclose(table.bias, bias, atol=2e-3)
    # Too few samples to pin 33 unknowns per colour down: refused, not a made-up table.
    with pytest.raises(ValueError, match="need more than 32 samples"):
        fit_colour_table(latents[:32], (latents @ factors)[:32], "test")


def test_a_scaled_table_reads_latents_held_larger():
    table = colour_table("flux")
    latents = np.random.default_rng(1).normal(size=(16, 4, 4)).astype(np.float32)
    assert np.array_equal(latents_to_rgb(latents * 0.5, table.scaled(0.5)), latents_to_rgb(latents, table))
    assert not np.array_equal(latents_to_rgb(latents * 0.5, table), latents_to_rgb(latents, table))


def test_calibration_pictures_give_each_latent_cell_a_colour_from_across_the_cube_and_a_texture():
    pictures = calibration_pictures(cell=4)
    assert pictures.shape == (PICTURES, 3, CELLS * 4, CELLS * 4) and pictures.dtype == np.float32
    assert pictures.min() >= -1 and pictures.max() <= 1
    cells = pictures.reshape(PICTURES, 3, CELLS, 4, CELLS, 4)
    means = cells.mean(axis=(3, 5))
    assert means.min() < -0.6 and means.max() > 0.6  # dark and bright, in every channel
    spread = cells.std(axis=(3, 5))
    assert spread.min() < 0.05 < 0.15 < spread.max()  # some cells nearly flat, some textured
    assert np.array_equal(pictures, calibration_pictures(cell=4))  # seeded: the same table every load


class LinearAutoencoder(torch.nn.Module):
    """A real autoencoder whose preview table is known exactly: each latent cell is a linear function of its patch
    (a strided convolution) and each decoded patch a linear function of its cell (its transpose), so a decoded
    patch's mean colour is its latent times the decoder's kernel means, plus its bias."""

    def __init__(self, factor: int, channels: int = 32):
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.down = torch.nn.Conv2d(3, channels, factor, stride=factor)
        self.up = torch.nn.ConvTranspose2d(channels, 3, factor, stride=factor)
        with torch.no_grad():
            for layer, size in ((self.down, 0.015), (self.up, 0.03)):  # decoded patches stay inside [-1, 1]
                # A colour per channel (the kernel's mean) with some detail on it.
                mean = torch.randn(*layer.weight.shape[:2], 1, 1, generator=generator) * size
                layer.weight.copy_(mean + torch.randn(layer.weight.shape, generator=generator) * size / 2)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.05)

    @property
    def dtype(self):
        return self.up.weight.dtype

    def encode(self, pictures, return_dict=False):
        return (self.down(pictures),)

    def decode(self, latents, return_dict=False):
        return (self.up(latents),)


def _held_out(vae, scale):
    """Latents (as the transformer holds them) of pictures the fit did not see, their decoded cells' colours in
    8-bit levels, and the largest decoded value (a picture shows -1 to 1)."""
    pictures = torch.from_numpy(calibration_pictures(cell=8, seed=9))
    with torch.inference_mode():
        latents = vae.encode(pictures, return_dict=False)[0]
        decoded = vae.decode(latents, return_dict=False)[0]
    cells = torch.nn.functional.avg_pool2d(decoded.clamp(-1, 1), 8).permute(0, 2, 3, 1).numpy()
    return latents * scale, ((cells + 1) * 127.5).clip(0, 255), float(decoded.abs().max())


def _preview_errors(latents, expected, tables):
    """Mean distance in 8-bit levels between each table's previews of `latents` and `expected`."""
    return {
        name: np.abs(np.stack([latents_to_rgb(x.numpy(), colours) for x in latents]) - expected).mean()
        for name, colours in tables.items()
    }


def test_the_fit_from_an_autoencoder_pairs_each_latent_cell_with_its_decoded_patch():
    vae = LinearAutoencoder(factor=8)
    scale = 0.41407  # Sana's DC-AE's scaling factor: the table reads latents as the transformer holds them
    table = fit_from_autoencoder(vae, 8, scale, torch.device("cpu"))
    exact = vae.up.weight.detach().mean(dim=(2, 3)).numpy() / scale  # (32, 3)
    assert np.abs(exact).mean() > 0.05  # the weights checked are not near zero
    latents, expected, peak = _held_out(vae, scale)
    assert peak <= 1  # nothing clipped: the decoder is linear here
    exact_table = ColourTable("exact", exact, vae.up.bias.detach().numpy())
    errors = _preview_errors(latents, expected, {"fitted": table, "exact": exact_table})
    assert errors["exact"] < 0.6  # rounding to levels
    assert errors["fitted"] < 1.0, errors


def test_the_table_fitted_from_a_dc_ae_previews_what_it_decodes():
    """Held-out latents (not the calibration's): the fitted table's preview is the decoded picture's colours,
    cell by cell, closer than a flat picture of their mean colour, and far closer than another autoencoder's
    table. (The tiny random DC-AE decodes every latent to nearly one grey, so this checks the fit runs on
    diffusers' DC-AE and keeps its colours; the exact pairing is checked on the linear autoencoder above.)"""
    vae = build_tiny_sana().vae  # a DC-AE of Sana's 32 channels, 8x here
    scale = vae.config.scaling_factor
    table = fit_from_autoencoder(vae, 8, scale, torch.device("cpu"))
    assert isinstance(table, ColourTable) and table.factors.shape == (32, 3) and table.name.startswith("fitted")
    latents, expected, _ = _held_out(vae, scale)
    errors = _preview_errors(latents, expected, {"fitted": table, "flux2": "flux2"})
    errors["flat"] = np.abs(expected - expected.mean(axis=(0, 1, 2))).mean()
    assert errors["fitted"] < errors["flat"] * 0.8 and errors["fitted"] * 10 < errors["flux2"], errors


def test_a_fitted_table_is_kept_by_the_autoencoders_fingerprint_and_refitted_when_unreadable(tmp_path, monkeypatch):
    from desktop.engine.backends import preview_fit

    vae = build_tiny_sana().vae
    key = fingerprint(vae)
    assert key == fingerprint(build_tiny_sana().vae)  # the same weights, the same key
    assert key != fingerprint(build_tiny_sana(seed=1).vae)
    fits = []
    real_fit = preview_fit.fit_from_autoencoder
    monkeypatch.setattr(preview_fit, "fit_from_autoencoder", lambda *a: fits.append(a) or real_fit(*a))
    first = cached_fit(vae, 8, 0.41407, torch.device("cpu"), tmp_path, key)
    (stored,) = tmp_path.iterdir()
    assert stored.name.startswith(key) and len(fits) == 1
    again = cached_fit(vae, 8, 0.41407, torch.device("cpu"), tmp_path, key)
    assert len(fits) == 1  # read back, not fitted again
    assert np.array_equal(again.factors, first.factors) and np.array_equal(again.bias, first.bias)
    assert again.name == first.name
    # Another scale is another table.
    cached_fit(vae, 8, 1.0, torch.device("cpu"), tmp_path, key)
    assert len(fits) == 2 and len(list(tmp_path.iterdir())) == 2
    for damage in ('{"name": "x", "factors": [[1, 2, 3]], "bias": [0, 0, 0]}', "{not json", ""):
        stored.write_text(damage)
        mended = cached_fit(vae, 8, 0.41407, torch.device("cpu"), tmp_path, key)
        assert np.array_equal(mended.factors, first.factors)
    assert len(fits) == 5
    (tmp_path / "a file").write_text("")  # a folder that cannot be made: the table is used all the same
    unwritten = cached_fit(vae, 8, 0.41407, torch.device("cpu"), tmp_path / "a file" / "tables", key)
    assert np.array_equal(unwritten.factors, first.factors) and len(fits) == 6


def test_a_bf16_autoencoder_on_the_cpu_is_fitted_in_float32_and_left_as_it_was():
    vae = build_tiny_sana().vae
    expected = fit_from_autoencoder(vae.to(torch.bfloat16).to(torch.float32), 8, 0.41407, torch.device("cpu"))
    vae.to(torch.bfloat16)
    weights = {name: tensor.clone() for name, tensor in vae.state_dict().items()}
    table = fit_from_autoencoder(vae, 8, 0.41407, torch.device("cpu"))
    assert np.array_equal(table.factors, expected.factors) and np.array_equal(table.bias, expected.bias)
    assert vae.dtype == torch.bfloat16
    assert all(torch.equal(tensor, weights[name]) for name, tensor in vae.state_dict().items())


def _counting_calls(vae, calls):
    """`vae` whose encode and decode append their name to `calls` before they run."""
    for name in ("encode", "decode"):
        real = getattr(vae, name)
        setattr(vae, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return vae


class _Watcher:
    """A job's view of the fit: how often it was told it starts, and what had run each time it was asked to stop;
    it says stop once `allowed` calls have run (None: never)."""

    def __init__(self, calls, allowed=None):
        self.calls, self.allowed = calls, allowed
        self.started, self.asked = 0, []

    def watch(self):
        return FitWatch(self._start, self._stopped)

    def _start(self):
        self.started += 1

    def _stopped(self):
        self.asked.append(list(self.calls))
        return self.allowed is not None and len(self.calls) >= self.allowed


def test_a_fit_says_when_it_starts_and_stops_before_any_encode_or_decode_when_asked(tmp_path):
    """The fit takes some 20 s on a CPU: the job's progress is told when it starts (not for a table from the cache),
    and a cancelled job stops it before the next encode or decode, keeping nothing, its weights as they were."""
    calls = []
    vae = _counting_calls(build_tiny_sana().vae.to(torch.bfloat16), calls)
    weights = {name: tensor.clone() for name, tensor in vae.state_dict().items()}
    key, cpu = fingerprint(vae), torch.device("cpu")
    order = ["encode", "decode"] * PICTURES
    for allowed in range(len(order)):
        calls.clear()
        watcher = _Watcher(calls, allowed)
        with pytest.raises(FitStopped):
            cached_fit(vae, 8, 0.41407, cpu, tmp_path, key, watcher.watch())
        # Asked before each call, in order; stopped before the one after `allowed` calls; nothing kept.
        assert calls == order[:allowed] and watcher.asked == [order[:n] for n in range(allowed + 1)], watcher.asked
        assert watcher.started == 1 and list(tmp_path.iterdir()) == []
        assert vae.dtype == torch.bfloat16
        assert all(torch.equal(tensor, weights[name]) for name, tensor in vae.state_dict().items())
    calls.clear()
    watcher = _Watcher(calls)
    table = cached_fit(vae, 8, 0.41407, cpu, tmp_path, key, watcher.watch())
    assert calls == order and watcher.asked == [order[:n] for n in range(len(order))] and watcher.started == 1
    assert table.factors.shape == (vae.config.latent_channels, 3)
    # From the cache: no fit, nothing said.
    cached_fit(vae, 8, 0.41407, cpu, tmp_path, key, watcher.watch())
    assert watcher.started == 1 and calls == order
