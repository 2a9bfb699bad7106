"""Datasets: MVTec AD, VisA and BTAD layouts, plain folders of normal images, and a synthetic generator."""
