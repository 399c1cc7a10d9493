"""LDLQ: trellis quantization with GPTQ-style error feedback from a Hessian ``H = X^T X``.

The rotated weight ``Wt = U W V^T`` is quantized in blocks of 16 columns (one column of 16x16
tiles); each block is coded jointly by tail-biting Viterbi, and its error is fed forward to the
columns not yet coded. With ``R`` the upper Cholesky factor of the (damped, rotated) inverse Hessian
``(V H V^T)^-1 = R^T R``, the block error ``E_b = (W_b - Q_b) R_bb^-1`` updates the later columns by
``W_later -= E_b R_b,later``: for 1-column blocks this is exactly GPTQ; for 16-column blocks it is the
block LDL feedback of QuIP#/QTIP (no feedback inside a block, which the vector quantizer codes jointly).
The output-side rotation ``U`` does not change ``tr((W - Q) H (W - Q)^T)``.
"""
from __future__ import annotations

import torch

from ..formats import QuantizedTensor
from ..formats import hadamard
from ..formats import trellis as tf
from . import register_method
from .gptq import check_hessian, damped_inverse_cholesky
from .viterbi import TrellisSetup, _Progress, encode_tiles, want_progress


@register_method("ldlq")
def quantize_ldlq(weight: torch.Tensor, format: str, group_size: int, *, hessian: torch.Tensor = None,
                  code: str = "3inst", damp: float = 0.01, scale_dtype: torch.dtype = torch.float16,
                  seed: int = 0, lut: torch.Tensor | None = None, scale_factor: float | None = None,
                  progress: bool | None = None, device=None, chunk_tiles: int | None = None
                  ) -> QuantizedTensor:
    """Trellis-quantize ``weight [N, K]`` with LDLQ (needs ``hessian [K, K]``).

    Options as :func:`triton_marlin.quantize.viterbi.quantize_viterbi`, plus ``hessian`` and ``damp``.
    """
    setup = TrellisSetup(weight, format, group_size, code, scale_dtype, seed, lut, scale_factor, device)
    N, K, dev = setup.N, setup.K, setup.device
    H = check_hessian(hessian, K, dev)
    H = hadamard.rotate_hessian(H, setup.sv.to(dev), setup.meta["had_block_in"])
    R, _ = damped_inverse_cholesky(H, damp)
    wt = setup.rotate_weight(weight)
    scales = setup.initial_scales(wt)
    S = setup.expand_scales(scales)
    W = wt.to(torch.float64).clone()
    T = tf.TILE
    n_blocks = K // T
    states = torch.empty(n_blocks, N // T, tf.TILE_WEIGHTS, dtype=torch.int64, device=dev)
    bar = _Progress(n_blocks * (N // T), want_progress(progress, n_blocks * (N // T)), f"ldlq {format}")
    try:
        for b in range(n_blocks):
            c0, c1 = b * T, (b + 1) * T
            target = (W[:, c0:c1] / S[:, c0:c1]).to(torch.float32)
            tiles = tf.matrix_to_tiles(target).reshape(-1, tf.TILE_WEIGHTS)      # [N/16, 256]
            st = encode_tiles(tiles, setup.values, setup.bits, bar, chunk_tiles)
            states[b] = st
            q = tf.tiles_to_matrix(tf.path_values(st, setup.values), N, T).to(torch.float64) * S[:, c0:c1]
            if c1 < K:
                err = torch.linalg.solve_triangular(R[c0:c1, c0:c1], (W[:, c0:c1] - q), upper=True,
                                                    left=False)
                W[:, c1:] -= err @ R[c0:c1, c1:]
    finally:
        bar.close()
    return setup.finish(states, scales, "ldlq", damp=damp)
