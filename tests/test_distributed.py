"""femlib on a dask.distributed cluster: same numbers as eager, the weight matrix shipped once,
and no client ever created by femlib itself.

The cluster (2 worker processes, 1 thread each) lives in one module-scoped fixture and is
closed even when a test fails. ``test_femlib_never_creates_a_client`` must run before the
fixture starts it (pytest runs a module's tests in file order).
"""

import dask
import dask.array as da
import distributed  # a test extra: a broken install must fail here, not skip
import hyperspy.api as hs
import numpy as np
import pytest
from dask.delayed import Delayed

from femlib import integration as I
from femlib import moments as M
from femlib.integration import AzimuthalWeights

NAV = (6, 7)  # 42 probe positions
ROWS, COLS = 28, 30
CENTER = (14.2, 13.6)  # (x, y) pixels
AFFINE = np.array([[1.04, 0.02, 0.0], [0.01, 0.97, 0.0], [0.0, 0.0, 1.0]])
CHUNKS = ((2, 2, 2), (3, 4), (ROWS,), (10, 20))  # 6 navigation chunks, detector split too


def make_signal(seed=0):
    """Seeded calibrated FEMDiffraction2D with real between-frame fluctuations, and a
    thickness map (nm) for binning."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ROWS, :COLS]
    r = np.hypot(xx - CENTER[0], yy - CENTER[1])
    base = 40.0 * (1 + 0.5 * np.exp(-(((r - 9) / 3) ** 2)))
    c = rng.uniform(-1, 1, size=NAV + (1, 1))
    lam = base * (1 + 0.2 * c * np.exp(-(((r - 9) / 2) ** 2)))
    s = hs.signals.Signal2D(rng.poisson(lam).astype(np.float32))
    s.set_signal_type("fem_diffraction")
    s.calibration.center = CENTER
    s.calibration.affine = AFFINE
    mask = np.zeros((ROWS, COLS), bool)
    mask[:3, :5] = True
    s.calibration.mask = mask
    thickness = rng.uniform(20.0, 60.0, size=NAV)
    return s, thickness


VARIANCE_KWARGS = {
    "npt": 10,
    "method": "all",
    "gain": 1.0,
    "radial_range": (2.0, 12.0),
    "bins": 2,
    "show_progressbar": False,
}


def lazy_chunked(s):
    lazy = s.as_lazy().rechunk(nav_chunks=CHUNKS[:2], sig_chunks=CHUNKS[2:], inplace=False)
    assert lazy.data.chunks == CHUNKS
    return lazy


def assert_same_variance(lazy, eager):
    np.testing.assert_allclose(lazy.data, eager.data, rtol=1e-10)
    fl, fe = lazy.metadata.FEM, eager.metadata.FEM
    for key in ("standard_error", "combined", "combined_standard_error"):
        np.testing.assert_allclose(fl.get_item(key), fe.get_item(key), rtol=1e-10, err_msg=key)
    np.testing.assert_array_equal(fl.counts, fe.counts)


# ------------------------------------------------------------------ no client of our own
def test_femlib_never_creates_a_client(keep_small_chunks):
    from distributed.client import _get_global_client

    if _get_global_client() is not None:
        pytest.skip("a dask.distributed client is already active in this session")
    s, thickness = make_signal()
    with dask.config.set(scheduler="threads"):
        lazy = lazy_chunked(s).get_variance(thickness=thickness, **VARIANCE_KWARGS)
        lazy.compute()
        lazy_s = lazy_chunked(s)
        lazy_s.get_azimuthal_integral1d(npt=8, show_progressbar=False).compute()
    assert _get_global_client() is None
    assert_same_variance(lazy, s.get_variance(thickness=thickness, **VARIANCE_KWARGS))


# ------------------------------------------------------------------ graph structure
def _embeds(node, cls):
    """Whether a graph value holds an instance of ``cls`` itself (not a key referring to one).

    Handles dask's task-spec nodes (``Task``, ``DataNode``, ``TaskRef``, containers) and the
    legacy tuple/list/dict form.
    """
    from dask import _task_spec as ts

    if isinstance(node, cls):
        return True
    if isinstance(node, (ts.TaskRef, ts.Alias)):
        return False
    if isinstance(node, ts.DataNode):
        return _embeds(node.value, cls)
    if isinstance(node, ts.Task):
        parts = list(node.args) + list(node.kwargs.values()) + [node.func]
        return any(_embeds(a, cls) for a in parts)
    if isinstance(node, (tuple, list, set, frozenset)):
        return any(_embeds(a, cls) for a in node)
    if isinstance(node, dict):
        return any(_embeds(a, cls) for a in node.values())
    return False


def _dependencies(graph, key):
    value = graph[key]
    deps = getattr(value, "dependencies", None)
    if deps is None:  # legacy tuple task
        deps = dask.core.get_dependencies(graph, key)
    return set(deps)


def assert_weights_embedded_once(collection, chunk_task_prefix, n_chunks):
    """Exactly one graph value holds the AzimuthalWeights; every chunk task depends on its
    key. Checked on the graph as built and as optimised for the scheduler."""
    (optimised,) = dask.optimize(collection)
    for obj in (collection, optimised):
        graph = dict(obj.__dask_graph__())
        holders = [k for k, v in graph.items() if _embeds(v, AzimuthalWeights)]
        assert len(holders) == 1, holders
        (wkey,) = holders
        chunk_tasks = [
            k for k in graph if dask.utils.key_split(k) == chunk_task_prefix and k != wkey
        ]
        assert len(chunk_tasks) == n_chunks
        for k in chunk_tasks:
            assert wkey in _dependencies(graph, k), k


def test_weights_embedded_once_in_accumulate_graph(keep_small_chunks):
    s, _ = make_signal()
    w = s._weights(10, radial_range=(2.0, 12.0))
    darr = da.from_array(s.data, chunks=CHUNKS)
    delayed = M.accumulate_moments(
        darr, w, shot_weights=w.squared, methods=M._METHODS, compute=False
    )
    assert isinstance(delayed, Delayed)
    assert_weights_embedded_once(delayed, "accumulate_block", n_chunks=6)


@pytest.mark.parametrize("npt_azim", [1, 12])
def test_weights_embedded_once_in_integrate_graph(keep_small_chunks, npt_azim):
    s, _ = make_signal()
    w = s._weights(10, npt_azim=npt_azim)
    result = I.integrate_dask(da.from_array(s.data, chunks=CHUNKS), w)
    assert_weights_embedded_once(result, "integrate_block", n_chunks=6)


# ------------------------------------------------------------------ on a cluster
@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_lazy_get_variance_on_a_cluster_equals_eager(client, keep_small_chunks):
    s, thickness = make_signal(seed=1)
    eager = s.get_variance(thickness=thickness, **VARIANCE_KWARGS)
    with distributed.get_task_stream(client) as stream:
        lazy = lazy_chunked(s).get_variance(thickness=thickness, **VARIANCE_KWARGS)
        lazy.compute()
    # It really ran on the workers: one accumulation task per chunk.
    ran = [dask.utils.key_split(t["key"]) for t in stream.data]
    assert ran.count("accumulate_block") == 6
    assert_same_variance(lazy, eager)
    assert lazy.data.shape == (2, 4, 10)  # thickness bins x methods x radial bins


def test_lazy_azimuthal_integral_on_a_cluster_equals_eager(client, keep_small_chunks):
    s, _ = make_signal(seed=2)
    eager = s.get_azimuthal_integral2d(npt=10, npt_azim=16, show_progressbar=False)
    lazy = lazy_chunked(s).get_azimuthal_integral2d(npt=10, npt_azim=16, show_progressbar=False)
    with distributed.get_task_stream(client) as stream:
        data = lazy.data.compute()
    assert [dask.utils.key_split(t["key"]) for t in stream.data].count("integrate_block") == 6
    np.testing.assert_array_equal(data, eager.data)


def test_eager_signals_run_on_local_threads_even_with_a_client(client):
    """docs/user_guide/scaling.rst: eager data are not shipped to the cluster; the eager
    methods send no task to an active client (and give the numbers of the lazy path)."""
    s, thickness = make_signal(seed=3)
    with distributed.get_task_stream(client) as stream:
        eager = s.get_variance(thickness=thickness, **VARIANCE_KWARGS)
        s.get_azimuthal_integral1d(npt=8, show_progressbar=False)
        s.get_azimuthal_integral2d(npt=8, npt_azim=8, show_progressbar=False)
    assert stream.data == []
    with distributed.get_task_stream(client) as stream:  # the same client takes lazy work
        lazy = s.as_lazy().get_variance(thickness=thickness, **VARIANCE_KWARGS)
        lazy.compute()
    assert "accumulate_block" in {dask.utils.key_split(t["key"]) for t in stream.data}
    assert_same_variance(lazy, eager)


# ------------------------------------------------------------------ descan
def descan_signal(seed=3):
    """make_signal with one centre per probe position (a plane descan of ~2 px)."""
    s, thickness = make_signal(seed)
    ii, jj = np.mgrid[0 : NAV[0], 0 : NAV[1]]
    s.calibration.center = np.stack([CENTER[0] + 0.3 * jj, CENTER[1] + 0.25 * ii], -1)
    return s, thickness


DESCAN_KWARGS = dict(VARIANCE_KWARGS, method=["Omega", "r", "re"])


def test_descan_weights_embedded_once_in_accumulate_graph(keep_small_chunks):
    s, _ = descan_signal()
    w = s._weights(10, radial_range=(2.0, 12.0))
    assert isinstance(w, I.DescanWeights)
    darr = da.from_array(s.data, chunks=CHUNKS)
    delayed = M.accumulate_moments(darr, w, shot_weights=w.squared, methods=["Omega", "r"],
                                   compute=False)
    (optimised,) = dask.optimize(delayed)
    for obj in (delayed, optimised):
        graph = dict(obj.__dask_graph__())
        assert len([k for k, v in graph.items() if _embeds(v, I.DescanWeights)]) == 1


def test_lazy_descan_variance_on_a_cluster_equals_eager(client, keep_small_chunks):
    s, thickness = descan_signal()
    eager = s.get_variance(thickness=thickness, **DESCAN_KWARGS)
    assert "descan" in eager.metadata.FEM.Calibration
    with distributed.get_task_stream(client) as stream:
        lazy = lazy_chunked(s).get_variance(thickness=thickness, **DESCAN_KWARGS)
        lazy.compute()
    ran = [dask.utils.key_split(t["key"]) for t in stream.data]
    assert ran.count("accumulate_block") == 6
    assert_same_variance(lazy, eager)


def test_lazy_descan_integral_on_a_cluster_equals_eager(client, keep_small_chunks):
    s, _ = descan_signal(seed=4)
    eager = s.get_azimuthal_integral2d(npt=10, npt_azim=16, show_progressbar=False)
    lazy = lazy_chunked(s).get_azimuthal_integral2d(npt=10, npt_azim=16, show_progressbar=False)
    with distributed.get_task_stream(client) as stream:
        data = lazy.data.compute()
    assert [dask.utils.key_split(t["key"]) for t in stream.data].count("descan_block") == 6
    np.testing.assert_array_equal(data, eager.data)


def test_screening_on_a_cluster_equals_eager(client, keep_small_chunks):
    """find_bad_pixels, find_outlier_patterns and find_centers of a lazy scan run on the
    cluster (their tasks appear in its stream) and give the eager results."""
    from femlib.data import synthetic_fem

    s = synthetic_fem(navigation_shape=(12, 12), detector_shape=(64, 64), hot_pixels=4,
                      crystals=0.05, descan=(1.5, 1.0), thickness_gradient=False, seed=3)
    sim = s.metadata.Simulation
    s.calibration.center, s.calibration.affine = sim.center, sim.affine
    stop = sim.beam_stop_mask
    lazy = s.as_lazy().rechunk(nav_chunks=(4, 6), inplace=False)
    calls = [("find_bad_pixels", {"gain": 4.2, "mask": stop}),
             ("find_outlier_patterns", {"radial_range": (3.0, 5.75), "mask": stop}),
             ("find_centers", {"mask": stop, "tiles": (3, 3)})]
    for name, kw in calls:
        eager = getattr(s, name)(show_progressbar=False, **kw)
        with distributed.get_task_stream(client) as stream:
            got = getattr(lazy, name)(show_progressbar=False, **kw)
        assert len(stream.data) >= 6, name  # one task per chunk at least, on the workers
        np.testing.assert_allclose(np.asarray(got.data, dtype=float),
                                   np.asarray(eager.data, dtype=float), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
    assert eager.data.shape == (12, 12, 2) and got.metadata.Screening.descan.n_failed == 0
