"""Calibration: history loading and quality scoring, parameter estimation of the twin from a home's
history, predictions and their metrics, calibration reports. Imports :mod:`pems.twin` only."""
