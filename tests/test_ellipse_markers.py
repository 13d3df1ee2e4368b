"""femlib.ellipse._markers: ellipse_to_markers."""

import re

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest

from femlib import ellipse as E

SHAPE = (128, 128)


def test_markers_in_pixels_and_calibrated():
    params = np.array([50.0, 70.0, 31.0, 24.0, 0.5])
    pts = E.ellipse_points(params, 12)
    el = E.ellipse_to_markers(params)
    assert isinstance(el, hs.plot.markers.Ellipses)
    kw = el.kwargs
    np.testing.assert_allclose(kw["offsets"], [[70.0, 50.0]])
    np.testing.assert_allclose(kw["widths"], [62.0])
    np.testing.assert_allclose(kw["heights"], [48.0])
    np.testing.assert_allclose(kw["angles"], [np.degrees(0.5)])

    el, points = E.ellipse_to_markers(ellipse_array=params, points=pts)
    assert isinstance(points, hs.plot.markers.Points)
    np.testing.assert_allclose(points.kwargs["offsets"], pts[:, ::-1])

    inlier = np.arange(12) % 3 != 0
    el, in_pts, out_pts = E.ellipse_to_markers(params, points=pts, inlier=inlier)
    np.testing.assert_allclose(in_pts.kwargs["offsets"], pts[inlier, ::-1])
    np.testing.assert_allclose(out_pts.kwargs["offsets"], pts[~inlier, ::-1])

    s = hs.signals.Signal2D(np.zeros(SHAPE))
    s.axes_manager[0].scale, s.axes_manager[0].offset = 0.5, -10.0
    s.axes_manager[1].scale, s.axes_manager[1].offset = 0.5, 4.0
    el, points = E.ellipse_to_markers(params, points=pts, signal=s)
    np.testing.assert_allclose(el.kwargs["offsets"], [[-10 + 35.0, 4 + 25.0]])
    np.testing.assert_allclose(el.kwargs["widths"], [31.0])
    np.testing.assert_allclose(el.kwargs["heights"], [24.0])
    np.testing.assert_allclose(el.kwargs["angles"], [np.degrees(0.5)])
    np.testing.assert_allclose(
        points.kwargs["offsets"][0], [-10 + 0.5 * pts[0, 1], 4 + 0.5 * pts[0, 0]]
    )


def test_markers_bad_input():
    params = np.array([50.0, 70.0, 31.0, 24.0, 0.5])
    pts = E.ellipse_points(params, 12)
    inlier = np.arange(12) % 3 != 0
    with pytest.raises(ValueError, match="inlier needs points"):
        E.ellipse_to_markers(params, inlier=inlier)
    with pytest.raises(ValueError, match="one flag per point"):
        E.ellipse_to_markers(params, points=pts, inlier=inlier[:5])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "ellipse_array must be [row_c, col_c, semi_axis_0, semi_axis_1, rotation] (shape "
            "(5,) or (M, 5)), got an array of shape (4,)"
        ),
    ):
        E.ellipse_to_markers(np.ones(4))
    with pytest.raises(ValueError, match="ellipse_array must be finite with positive semi-axes"):
        E.ellipse_to_markers([1, 1, -1, 1, 0])
    with pytest.raises(ValueError, match="two signal axes"):
        E.ellipse_to_markers(params, signal=np.zeros(SHAPE))
    with pytest.raises(ValueError, match=r"points must be an \(N, 2\) array"):
        E.ellipse_to_markers(params, points=np.zeros((3, 3)))


def test_per_position_ellipses_are_ragged_markers():
    s = hs.signals.Signal2D(np.zeros((2, 3, 64, 64)))
    ellipses = np.empty((2, 3), dtype=object)
    points = np.empty((2, 3), dtype=object)
    for i in np.ndindex(2, 3):
        ellipses[i] = [30 + i[0], 31 + i[1], 20.0, 18.0, 0.1 * i[1]]
        points[i] = E.ellipse_points(ellipses[i], 6 + i[1])
    ellipses[1, 2] = None  # no ellipse found there
    el, pts = E.ellipse_to_markers(ellipses, points=points)
    assert el._is_iterating and pts._is_iterating
    # HyperSpy's order: (x, y) navigation index, the transpose of the data's
    np.testing.assert_allclose(el.kwargs["offsets"][1, 0], [[32.0, 30.0]])
    np.testing.assert_allclose(el.kwargs["widths"][0, 1], [40.0])
    assert el.kwargs["offsets"][2, 1].shape == (0, 2)
    np.testing.assert_allclose(pts.kwargs["offsets"][2, 0], points[0, 2][:, ::-1])
    s.add_marker([el, pts], permanent=True)
    s.axes_manager.indices = (1, 0)  # (x, y) navigation index: row 0, column 1
    np.testing.assert_allclose(el.get_current_kwargs()["offsets"], [[32.0, 30.0]])
    plt.close("all")
    # a numeric (*nav, 5) array is per position too
    dense = np.stack([[[30.0, 31.0, 20.0, 18.0, 0.0]] * 3] * 2)
    el = E.ellipse_to_markers(dense)
    assert el._is_iterating and el.kwargs["offsets"].shape == (3, 2)
    # flags per position
    flags = np.empty((2, 3), dtype=object)
    for i in np.ndindex(2, 3):
        flags[i] = np.arange(len(points[i])) % 2 == 0
    el, a, b = E.ellipse_to_markers(ellipses, points=points, inlier=flags)
    assert len(a.kwargs["offsets"][0, 0]) == 3 and len(b.kwargs["offsets"][0, 0]) == 3


def test_per_position_bad_input():
    with pytest.raises(ValueError, match="use an object array for ragged"):
        E.ellipse_to_markers([[1.0, 2.0, 3.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    ellipses = np.empty((2,), dtype=object)
    ellipses[0] = [30.0, 31.0, 20.0, 18.0, 0.0]
    ellipses[1] = [30.0, 31.0, -20.0, 18.0, 0.0]
    with pytest.raises(ValueError, match=re.escape("ellipse_array[(1,)] must be finite")):
        E.ellipse_to_markers(ellipses)
    ellipses[1] = None
    with pytest.raises(ValueError, match="points must be an object array of the same"):
        E.ellipse_to_markers(ellipses, points=np.zeros((4, 2)))


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.14, 0.07), (0.2, -0.1)])
def test_drawn_ellipse_passes_through_the_fitted_points(scales):
    """Render with matplotlib (image y axis down) and map the drawn outline back."""
    params = np.array([50.0, 70.0, 31.0, 24.0, 0.5])
    s = hs.signals.Signal2D(np.zeros(SHAPE))
    calibrated = scales != (1.0, 1.0)  # else: pixel markers on an uncalibrated signal
    if calibrated:
        for axis, scale in zip(s.axes_manager.signal_axes, scales, strict=True):
            axis.scale = scale
            axis.offset = -3.0
    el = E.ellipse_to_markers(params, signal=s if calibrated else None)
    s.plot(colorbar=False)
    try:
        s.add_marker(el, plot_marker=True)
        fig = plt.gcf()
        fig.canvas.draw()
        coll = el._collection
        ax = coll.axes
        assert ax.yaxis_inverted() or scales[1] < 0
        path = coll.get_paths()[0]
        on_curve = path.vertices[0:-1:3]  # end points of the Bezier segments lie on it
        shape = on_curve @ coll.get_transforms()[0][:2, :2].T
        offset = coll.get_offset_transform().transform(coll.get_offsets())[0]
        data = ax.transData.inverted().transform(coll.get_transform().transform(shape) + offset)
    finally:
        plt.close("all")
    ax_x, ax_y = s.axes_manager.signal_axes
    rows = (data[:, 1] - ax_y.offset) / ax_y.scale
    cols = (data[:, 0] - ax_x.offset) / ax_x.scale
    assert len(rows) >= 8
    np.testing.assert_allclose(
        E.ellipse_residuals(np.column_stack([rows, cols]), params), 0.0, atol=1e-6
    )
