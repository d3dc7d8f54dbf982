"""Constant-velocity Kalman filter on (cx, cy, aspect, h), as used by ByteTrack.

The state is ``(cx, cy, a, h, vcx, vcy, va, vh)`` where ``a = w / h``. Process and
measurement noise are proportional to the box height, with the standard ByteTrack /
DeepSORT weights (position 1/20, velocity 1/160). Initiation, prediction and update are
vectorised over tracks (``multi_*``: one batched 4x4 ``numpy.linalg.solve`` per call);
the single-state ``initiate``/``update`` are the reference they are tested against.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["KalmanFilterXYAH"]

FloatArray = npt.NDArray[np.float64]

_NDIM = 4
_DT = 1.0


class KalmanFilterXYAH:
    """ByteTrack's ``KalmanFilterXYAH`` (8-dimensional state, 4-dimensional measurement)."""

    def __init__(self) -> None:
        motion = np.eye(2 * _NDIM, dtype=np.float64)
        for i in range(_NDIM):
            motion[i, _NDIM + i] = _DT
        self._motion_mat: FloatArray = motion
        self._update_mat: FloatArray = np.eye(_NDIM, 2 * _NDIM, dtype=np.float64)
        self._std_weight_position = 1.0 / 20.0
        self._std_weight_velocity = 1.0 / 160.0

    def initiate(self, measurement: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Create a track state from an unassociated ``(cx, cy, a, h)`` measurement.

        Returns the mean (8,) with zero velocity and the diagonal covariance (8, 8).
        """
        mean = np.zeros(2 * _NDIM, dtype=np.float64)
        mean[:_NDIM] = measurement
        h = float(measurement[3])
        wp = self._std_weight_position
        wv = self._std_weight_velocity
        std = np.array(
            [
                2.0 * wp * h,
                2.0 * wp * h,
                1e-2,
                2.0 * wp * h,
                10.0 * wv * h,
                10.0 * wv * h,
                1e-5,
                10.0 * wv * h,
            ],
            dtype=np.float64,
        )
        return mean, np.diag(np.square(std))

    def multi_initiate(self, measurement: FloatArray) -> tuple[FloatArray, FloatArray]:
        """:meth:`initiate` for K measurements (K, 4): means (K, 8), covariances (K, 8, 8)."""
        count = measurement.shape[0]
        mean = np.zeros((count, 2 * _NDIM), dtype=np.float64)
        mean[:, :_NDIM] = measurement
        h = mean[:, 3]
        wp = self._std_weight_position
        wv = self._std_weight_velocity
        ones = np.ones_like(h)
        std = np.stack(
            [
                2.0 * wp * h,
                2.0 * wp * h,
                1e-2 * ones,
                2.0 * wp * h,
                10.0 * wv * h,
                10.0 * wv * h,
                1e-5 * ones,
                10.0 * wv * h,
            ],
            axis=1,
        )
        covariance = np.zeros((count, 2 * _NDIM, 2 * _NDIM), dtype=np.float64)
        covariance.reshape(count, -1)[:, :: 2 * _NDIM + 1] = np.square(std)  # diagonals
        return mean, covariance

    def multi_predict(
        self, mean: FloatArray, covariance: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Predict K states one step ahead: ``mean`` (K, 8), ``covariance`` (K, 8, 8).

        ``F P F^T + Q`` is computed as ``(F P) F^T`` with ``F P`` a block-row sum and the
        right product one 2-D matrix product for all K states. Every entry of either
        product is a sum of two nonzero terms (the rest are exact zeros, ``dt = 1``), so
        the values equal ``F @ P @ F.T + Q`` exactly, in any summation order.
        """
        count = mean.shape[0]
        if count == 0:
            return mean.copy(), covariance.copy()
        d = _NDIM
        h = mean[:, 3]
        wp = self._std_weight_position
        wv = self._std_weight_velocity
        f = self._motion_mat
        new_mean: FloatArray = mean @ f.T
        fp = covariance.copy()
        fp[:, :d, :] += covariance[:, d:, :] * _DT
        new_cov: FloatArray = (fp.reshape(-1, 2 * d) @ f.T).reshape(count, 2 * d, 2 * d)
        std = np.empty((count, 2 * d), dtype=np.float64)
        std[:, 0] = wp * h
        std[:, 1] = wp * h
        std[:, 2] = 1e-2
        std[:, 3] = wp * h
        std[:, 4] = wv * h
        std[:, 5] = wv * h
        std[:, 6] = 1e-5
        std[:, 7] = wv * h
        # the diagonal of each 8x8 matrix: every 9th entry of its 64
        new_cov.reshape(count, -1)[:, :: 2 * d + 1] += np.square(std)
        return new_mean, new_cov

    def project(self, mean: FloatArray, covariance: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Project one state (8,), (8, 8) into measurement space: (4,), (4, 4)."""
        h = float(mean[3])
        wp = self._std_weight_position
        std = np.array([wp * h, wp * h, 1e-1, wp * h], dtype=np.float64)
        hm = self._update_mat
        projected_mean: FloatArray = hm @ mean
        projected_cov: FloatArray = hm @ covariance @ hm.T + np.diag(np.square(std))
        return projected_mean, projected_cov

    def update(
        self, mean: FloatArray, covariance: FloatArray, measurement: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Kalman correction of one state with a ``(cx, cy, a, h)`` measurement."""
        projected_mean, projected_cov = self.project(mean, covariance)
        # K = P H^T S^-1  <=>  K^T = S^-1 (H P)   (P and S are symmetric)
        gain_t = np.asarray(
            np.linalg.solve(projected_cov, self._update_mat @ covariance), dtype=np.float64
        )
        gain = gain_t.T
        innovation = measurement - projected_mean
        new_mean: FloatArray = mean + gain @ innovation
        new_cov: FloatArray = covariance - gain @ projected_cov @ gain.T
        return new_mean, new_cov

    def multi_update(
        self, mean: FloatArray, covariance: FloatArray, measurement: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """:meth:`update` of K states at once: ``mean`` (K, 8), ``covariance`` (K, 8, 8),
        ``measurement`` (K, 4) ``(cx, cy, a, h)``. Returns new arrays; the inputs are kept.
        """
        count = mean.shape[0]
        if count == 0:
            return mean.copy(), covariance.copy()
        # H = [I 0], so H x and H P H^T are slices (exactly what the matrix products give).
        std = np.empty((count, _NDIM), dtype=np.float64)
        std[:, :] = self._std_weight_position * mean[:, 3:4]
        std[:, 2] = 1e-1
        projected_cov = covariance[:, :_NDIM, :_NDIM].copy()
        projected_cov.reshape(count, -1)[:, :: _NDIM + 1] += np.square(std)  # diagonals
        # K^T = S^-1 (H P), one batched 4x4 solve
        gain_t = np.asarray(
            np.linalg.solve(projected_cov, covariance[:, :_NDIM, :]), dtype=np.float64
        )
        gain = gain_t.transpose(0, 2, 1)
        innovation = measurement - mean[:, :_NDIM]
        new_mean: FloatArray = mean + (gain @ innovation[:, :, None])[:, :, 0]
        new_cov: FloatArray = covariance - gain @ projected_cov @ gain_t
        return new_mean, new_cov
