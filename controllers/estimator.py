"""State estimation for controllers: the twin's Kalman filter (see :mod:`pems.twin.estimator`)."""

from pems.twin.estimator import KalmanEstimator, NoiseModel

__all__ = ["KalmanEstimator", "NoiseModel"]
