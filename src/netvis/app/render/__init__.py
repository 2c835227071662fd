"""Rendering: matplotlib figures for saliency maps (overlays, method grids) and helpers to save them."""

from netvis.app.render.figures import (
    image_to_array,
    map_to_array,
    method_grid,
    overlay,
    overlay_array,
    save_figure,
)

__all__ = [
    "image_to_array",
    "map_to_array",
    "method_grid",
    "overlay",
    "overlay_array",
    "save_figure",
]
