"""Benchmarks: voxel bi-exponential fitting and VSV convolution, baseline vs ours.

Run: python benchmarks/bench_dosimetry_speed.py [--voxels 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import curve_fit

from theralake.dosimetry.dose import convolve_fft
from theralake.dosimetry.voxel_kinetics import fit_voxel_tacs


def bench_voxel_fit(n_vox: int, threads: int) -> None:
    rng = np.random.default_rng(0)
    t = np.array([4.0, 24.0, 96.0, 168.0])
    lw = math.log(2) / rng.uniform(30, 80, n_vox)
    lu = math.log(2) / rng.uniform(1, 5, n_vox)
    a0 = rng.uniform(1, 10, n_vox)
    y = a0 * (np.exp(-np.outer(t, lw)) - np.exp(-np.outer(t, lu)))
    y *= 1 + 0.05 * rng.normal(size=y.shape)
    truth = a0 * (1 / lw - 1 / lu)

    def f(tt, a, l1, l2):
        return a * (np.exp(-l1 * tt) - np.exp(-l2 * tt))

    n_loop = 300
    t0 = time.perf_counter()
    for i in range(n_loop):
        try:
            curve_fit(f, t, y[:, i], p0=[a0[i], lw[i] * 1.2, lu[i] * 0.8],
                      bounds=([0, 1e-6, 1e-6], [1e4, 10, 50]), maxfev=2000)
        except RuntimeError:
            pass
    loop_s = (time.perf_counter() - t0) / n_loop * n_vox
    print(f"voxel bi-exp fit, {n_vox} voxels x 4 time points:")
    print(f"  scipy curve_fit loop (extrapolated from {n_loop}): {loop_s:8.1f} s")
    for label, dtype, n_iter in (("float32, 25 iterations", torch.float32, 25),
                                 ("float64, 40 iterations (default)", torch.float64, 40)):
        t0 = time.perf_counter()
        res = fit_voxel_tacs(t, y.reshape(4, -1), model="bi",
                             decay_constant_per_h=math.log(2) / 159.5, threads=threads,
                             chunk=250_000, dtype=dtype, n_iter=n_iter)
        ours_s = time.perf_counter() - t0
        err = np.median(np.abs(res.tia_map.ravel() / truth - 1))
        print(f"  theralake batched LM ({label}, {threads} threads): {ours_s:6.1f} s"
              f"  -> {loop_s / ours_s:.0f}x, median |TIA error| {100 * err:.2f} %")


def bench_convolution() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((256, 256, 256))
    k = rng.random((11, 11, 11))
    t0 = time.perf_counter()
    ours = convolve_fft(img, k)
    fft_s = time.perf_counter() - t0
    # baseline: scipy.ndimage.convolve on a slab, extrapolated to the full volume
    slab = 24
    t0 = time.perf_counter()
    ref = ndimage.convolve(img[:slab + 10], k, mode="constant")
    base_s = (time.perf_counter() - t0) * 256 / (slab + 10)
    diff = np.abs(ref[5:slab] - ours[5:slab]).max() / np.abs(ours).max()
    print("VSV convolution 256^3 with 11^3 kernel:")
    print(f"  scipy.ndimage.convolve (extrapolated from a slab): {base_s:8.2f} s")
    print(f"  theralake FFT:                                     {fft_s:8.2f} s")
    print(f"  speed-up: {base_s / fft_s:.0f}x ; max rel. difference {diff:.1e}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxels", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    bench_convolution()
    bench_voxel_fit(a.voxels, a.threads)
