# fit_erf.py: the minimax fits behind ck_erf_row (Sources/CKernels/ElementwiseMath.h): erf(x) = x + x·P(x²) below
# C0, erfc(t) = exp(Q(t)) above it, each by linear programming on a dense grid against 40-digit mpmath values.
# Usage: python fit_erf.py C0 DEG_P DEG_Q HI   (needs numpy, scipy, mpmath; writes cA.npy and cB.npy here)
# Minimax (on a dense grid, by linear programming) fits for a vectorizable erff.
import numpy as np, mpmath as mp
from scipy.optimize import linprog
mp.mp.dps = 40
def minimax(A, f, w):
    # minimize t s.t. -t <= w*(A c - f) <= t
    m, k = A.shape
    WA = A * w[:, None]; Wf = f * w
    c = np.zeros(k + 1); c[-1] = 1
    Aub = np.vstack([np.hstack([WA, -np.ones((m, 1))]), np.hstack([-WA, -np.ones((m, 1))])])
    bub = np.concatenate([Wf, -Wf])
    r = linprog(c, A_ub=Aub, b_ub=bub, bounds=[(None, None)] * (k + 1), method="highs")
    return r.x[:-1], r.x[-1]
import sys
c0 = float(sys.argv[1]); degA = int(sys.argv[2]); degB = int(sys.argv[3]); hi = float(sys.argv[4])
# Region A: erf(x) = x + x*P(s), s = x^2; relative error of erf.
xs = np.linspace(1e-4, c0, 3000)
s = xs * xs
f = np.array([float(mp.erf(x) / x - 1) for x in xs])
w = np.array([float(x / mp.erf(x)) for x in xs]) * 2.0**24  # rel error: x*(P-f)/erf
A = np.vander(s, degA + 1, increasing=True)
cA, eA = minimax(A, f, w)
print("A rel err", eA, [float(np.float32(v)) for v in cA])
# Region B: erfc(t) = exp(q(t)), t in [c0, hi]; erf error = erfc * dq.
ts = np.linspace(c0, hi, 4000)
q = np.array([float(mp.log(mp.erfc(t))) for t in ts])
wB = np.array([float(mp.erfc(t)) for t in ts]) * 2.0**24
B = np.vander(ts, degB + 1, increasing=True)
cB, eB = minimax(B, q, wB)
print("B abs err in erf", eB, "max dq", np.max(np.abs(B @ cB - q)), [float(np.float32(v)) for v in cB])
np.save("cA.npy", cA); np.save("cB.npy", cB)
