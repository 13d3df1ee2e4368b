"""Datasets: an offline synthetic FEM dataset with ground truth, and the real ZrCuAl data."""
