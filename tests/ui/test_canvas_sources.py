"""Every way a picture becomes the image-to-image / inpainting source: open, paste (drop and history
have their own tests in test_mask_canvas.py and test_history_panel.py)."""

from __future__ import annotations

from PIL import Image
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QApplication


def test_open_image_makes_it_the_source(qtbot, studio, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (96, 72), (10, 200, 30)).save(path)
    toolbar = studio.window.canvas_toolbar
    with qtbot.waitSignal(toolbar.source_changed, timeout=5000):
        assert studio.window.open_source_image(str(path))
    assert (toolbar.source.width(), toolbar.source.height()) == (96, 72)
    assert toolbar.mode == "img2img"


def test_a_non_image_is_refused_with_a_message(qtbot, studio, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    assert not studio.window.open_source_image(str(path))
    assert studio.window.canvas_toolbar.source is None


def test_paste_makes_the_clipboard_image_the_source(qtbot, studio):
    image = QImage(40, 24, QImage.Format.Format_RGB32)
    image.fill(QColor(200, 20, 20))
    QApplication.clipboard().setImage(image)
    toolbar = studio.window.canvas_toolbar
    with qtbot.waitSignal(toolbar.source_changed, timeout=5000):
        studio.window.window_actions.paste_image.trigger()
    assert (toolbar.source.width(), toolbar.source.height()) == (40, 24)
    assert toolbar.source.pixelColor(3, 3).getRgb()[:3] == (200, 20, 20)
    QApplication.clipboard().clear()
    problems = []
    toolbar.problem.connect(problems.append)
    assert not studio.window.paste_source_image()
    assert problems and "clipboard holds no image" in problems[0]
