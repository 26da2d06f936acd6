"""plot.py: the picture of an edit, for an edit in place and for one that makes the song longer."""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from musicguide.errors import UserError
from musicguide.plot import FLAGGED_SEAM_COLOUR, SEAM_COLOUR, draw_edit, require_matplotlib, save_png
from musicguide.splice import seam_report

SR = 44100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class FakeSeam:
    seconds: float
    flagged: bool


def tone_song(seconds: float, frequency: float = 220.0, level: float = 0.3, seed: int = 0) -> torch.Tensor:
    """[2, N]: a tone under a little noise, so that both spectrograms and level curves have content."""
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    noise = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, len(t)))) * 0.01
    return (level * torch.sin(2 * torch.pi * frequency * t) + noise).float()


def plot_edit(path: Path, original, edited, sample_rate: int, **drawing):
    """Draw as the CLI's --plot does (`draw_edit`), and write the PNG (`save_png`)."""
    figure = draw_edit(original, edited, sample_rate, **drawing)
    save_png(figure, path)
    return figure


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, after checking it is one."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def seam_lines(figure) -> list:
    """The vertical lines drawn at seams, on every axes."""
    return [line for axis in figure.axes for line in axis.get_lines() if line.get_linestyle() == "--"]


def test_an_infill_like_edit_is_drawn_with_its_region_and_measured_seams(tmp_path):
    original = tone_song(6.0)
    edited = original.clone()
    edited[:, 2 * SR : 3 * SR] = tone_song(1.0, frequency=880.0, level=0.6, seed=1)  # louder, higher
    seams = seam_report(edited, SR, [2 * SR, 3 * SR], reference=original)
    assert all(seam.flagged for seam in seams)  # a 6 dB step in a steady tone
    path = tmp_path / "song.infill.png"
    figure = plot_edit(path, original, edited, SR, region=(2.0, 3.0), seams=seams, title="infill 0:02-0:03")
    assert png_size(path) == (1200, 800)
    spectrograms, levels = figure.axes[:2], figure.axes[2]
    assert [image.get_extent() for axis in spectrograms for image in axis.get_images()] == [
        [0.0, 6.0, 0, 128],
        [0.0, 6.0, 0, 128],
    ]
    assert len(levels.get_lines()) == 2 + len(seams)  # before, after, and one line per seam
    assert levels.get_xlim() == (0.0, 6.0)
    assert figure.get_suptitle() == "infill 0:02-0:03"
    # The level curve follows the audio: -13.5 dBFS before (0.3 amplitude sine), -7.5 inside.
    after = levels.get_lines()[1]
    inside = (after.get_xdata() > 2.1) & (after.get_xdata() < 2.9)
    assert np.median(after.get_ydata()[inside]) == pytest.approx(20 * np.log10(0.6 / np.sqrt(2)), abs=0.2)


def test_flagged_seams_are_red_and_the_others_not(tmp_path):
    original = tone_song(6.0)
    seams = [FakeSeam(1.0, flagged=False), FakeSeam(4.0, flagged=True)]
    figure = plot_edit(tmp_path / "a.png", original, original, SR, region=(1.0, 4.0), seams=seams)
    colours = {line.get_xdata()[0]: to_rgba(line.get_color()) for line in seam_lines(figure)}
    assert colours == {1.0: to_rgba(SEAM_COLOUR), 4.0: to_rgba(FLAGGED_SEAM_COLOUR)}
    assert to_rgba(SEAM_COLOUR) != to_rgba(FLAGGED_SEAM_COLOUR) == to_rgba("red")
    legend = [text.get_text() for text in figure.axes[2].get_legend().get_texts()]
    assert legend == ["before", "after", "edited region", "seam", "flagged seam (listen here)"]


def test_the_seam_colours_reach_the_png(tmp_path):
    """In the picture itself: pure red only where the flagged seam is drawn."""
    from PIL import Image

    original = tone_song(6.0)
    path = tmp_path / "a.png"
    figure = plot_edit(path, original, original, SR, seams=[FakeSeam(1.5, False), FakeSeam(4.5, True)])
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    red_columns = np.unique(np.nonzero(red)[1])
    axis = figure.axes[2]
    to_pixel = axis.transData.transform
    flagged_x = to_pixel((4.5, 0))[0]
    unflagged_x = to_pixel((1.5, 0))[0]
    seam_columns = red_columns[np.abs(red_columns - flagged_x) < 3]
    assert len(seam_columns) > 0
    assert not np.any(np.abs(red_columns - unflagged_x) < 3)


def test_a_continuation_is_drawn_on_the_longer_output(tmp_path):
    original = tone_song(4.0)
    edited = torch.cat([original, tone_song(3.0, frequency=330.0, seed=2)], dim=1)
    path = tmp_path / "song.continue.png"
    figure = plot_edit(path, original, edited, SR, region=(4.0, 7.0), seams=[FakeSeam(4.0, False)])
    assert png_size(path) == (1200, 800)
    extents = [image.get_extent() for axis in figure.axes[:2] for image in axis.get_images()]
    assert extents == [[0.0, 4.0, 0, 128], [0.0, 7.0, 0, 128]]
    before, after = figure.axes[2].get_lines()[:2]
    assert before.get_xdata().max() < 4.0 < after.get_xdata().max() < 7.0
    assert figure.axes[2].get_xlim() == (0.0, 7.0)


def test_the_original_can_be_placed_at_an_offset(tmp_path):
    """A transition compares its output with the next song, which starts later in the output."""
    incoming = tone_song(3.0, frequency=330.0)
    output = torch.cat([tone_song(2.0), incoming], dim=1)
    figure = plot_edit(tmp_path / "t.png", incoming, output, SR, offset=2.0, region=(1.0, 3.0))
    assert figure.axes[0].get_images()[0].get_extent() == [2.0, 5.0, 0, 128]
    assert figure.axes[2].get_lines()[0].get_xdata().min() >= 2.0


def test_without_an_original_only_the_output_is_drawn(tmp_path):
    path = tmp_path / "generated.png"
    figure = plot_edit(path, None, tone_song(3.0), SR)
    assert png_size(path) == (1200, 800)
    assert len(figure.axes) == 3  # the output's spectrogram, its level, the colour bar
    legend = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert legend == ["after"]


def test_silence_is_drawn_at_the_floor(tmp_path):
    figure = plot_edit(tmp_path / "s.png", None, torch.zeros(2, SR), SR)
    image = figure.axes[0].get_images()[0].get_array()
    assert float(image.max()) <= -80
    assert np.all(figure.axes[1].get_lines()[0].get_ydata() == -80)


def test_the_png_is_written_atomically(tmp_path):
    path = tmp_path / "song.png"
    path.write_bytes(b"old")
    plot_edit(path, None, tone_song(1.0), SR)
    assert png_size(path) == (1200, 800)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.png"]


def test_a_caller_with_its_own_temporary_file_can_draw_and_save(tmp_path):
    temporary = tmp_path / ".song.png.1234.partial"
    save_png(draw_edit(None, tone_song(1.0), SR), temporary)
    assert png_size(temporary) == (1200, 800)


def test_without_matplotlib_plot_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(UserError) as caught:
        require_matplotlib()
    message = str(caught.value)
    assert "--plot" in message and "matplotlib" in message and "[plot]" in message and "\n" not in message
    with pytest.raises(UserError, match="matplotlib"):
        plot_edit(tmp_path / "x.png", None, tone_song(1.0), SR)
    assert not (tmp_path / "x.png").exists()
