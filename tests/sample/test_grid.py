"""The sample grids: each image with its caption and the judge's verdict under it (a green bar
for right, red for wrong), wrapped to the cell, so that a person reads the grid alone."""
import numpy as np

from mmar.jobs.sample import LINE_HEIGHT, VERDICT_COLOURS, _wrap, image_grid


def test_wrap_keeps_words_and_width():
    lines = _wrap("a red circle left of a blue square", 15)
    assert lines == ["a red circle", "left of a blue", "square"]
    assert all(len(line) <= 15 for line in lines)
    assert _wrap("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert _wrap("", 5) == []


def test_labels_and_verdicts_under_each_image():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[1] = 255
    plain = np.asarray(image_grid(images, 2))
    labels = [("a red circle left of a blue square", True), ("two green squares", False),
              ("one triangle", None)]
    grid = np.asarray(image_grid(images, 2, labels=labels))
    cell_w, img_h = 96, 96
    lines = max(len(_wrap(t, (cell_w - 4) // 6)) for t, _ in labels)
    label_h = 4 + 3 + LINE_HEIGHT * lines
    assert grid.shape == (2 * (img_h + label_h + 2), plain.shape[1], 3)
    # the images themselves are where they were, scaled
    assert (grid[:img_h, cell_w + 2:2 * cell_w + 2] == 255).all()
    # the verdict bars: green under image 0, red under image 1, none under image 2
    assert (grid[img_h + 1, 10] == VERDICT_COLOURS[True]).all()
    assert (grid[img_h + 1, cell_w + 12] == VERDICT_COLOURS[False]).all()
    row2 = img_h + label_h + 2
    assert not any((grid[row2 + img_h + 1, 10] == c).all() for c in VERDICT_COLOURS.values())
    # text was drawn in each label strip (light pixels on the dark background)
    for y0, x0 in ((0, 0), (0, cell_w + 2), (row2, 0)):
        strip = grid[y0 + img_h + 5:y0 + img_h + label_h, x0:x0 + cell_w]
        assert (strip.min(axis=-1) > 200).sum() > 20
    # without labels the grid is as before
    assert plain.shape == (2 * (img_h + 2), 2 * (cell_w + 2), 3)
