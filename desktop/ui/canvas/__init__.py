"""The editing canvas: the picture, a paintable inpainting mask, tools, undo, and the toolbar."""

from desktop.ui.canvas.mask_layer import Brush, MaskLayer
from desktop.ui.canvas.toolbar import CanvasToolbar
from desktop.ui.canvas.view import MaskCanvas

__all__ = ["Brush", "CanvasToolbar", "MaskCanvas", "MaskLayer"]
