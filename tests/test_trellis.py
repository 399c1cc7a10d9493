"""Trellis formats: codes, bitstreams, tail-biting, Viterbi optimality, artifacts, quality."""
import itertools

import numpy as np
import pytest
import torch

import triton_marlin as tm
from triton_marlin.formats import FormatError, QuantizedTensor
from triton_marlin.formats import hadamard
from triton_marlin.formats import trellis as tf
from triton_marlin.quantize.viterbi import viterbi

BITS = (2, 3, 4)


# -- codes -------------------------------------------------------------------------------------
def _code_value_numpy(state: int, code: str, lut=None) -> float:
    """Independent scalar implementation of each code (numpy uint32 / float16)."""
    with np.errstate(over="ignore"):
        if code == "3inst":
            x = np.uint32(state) * np.uint32(89226354) + np.uint32(64248484)
            x = (x & np.uint32(0x8FFF8FFF)) ^ np.uint32(0x3B603B60)
            lo = np.array([x & 0xFFFF], dtype=np.uint16).view(np.float16)[0]
            hi = np.array([x >> 16], dtype=np.uint16).view(np.float16)[0]
            return float(np.float16(lo + hi))           # fp16 add, round to nearest even
        if code == "1mad":
            x = int(np.uint32(state) * np.uint32(34038481) + np.uint32(76625530))
            return float(sum((x >> (8 * i)) & 255 for i in range(4)) - 510)
        if code == "1mad2":          # a 2-D value: 1mad, and 1mad with a second LCG
            x = int(np.uint32(state) * np.uint32(34038481) + np.uint32(76625530))
            y = int(np.uint32(state) * np.uint32(0x2E3A8F1D) + np.uint32(0x9E3779B9))
            return [float(sum((z >> (8 * i)) & 255 for i in range(4)) - 510) for z in (x, y)]
        if code == "1mad2r":         # a 2-D value: 1mad, and the signed byte sum of its word rotated right by 6
            x = np.uint32(state) * np.uint32(34038481) + np.uint32(76625530)
            y = (x >> np.uint32(6)) | (x << np.uint32(26))
            b = np.array([y], dtype=np.uint32).view(np.uint8).astype(np.int64)        # little-endian bytes
            return [float(sum((int(x) >> (8 * i)) & 255 for i in range(4)) - 510),
                    float(b[0] - b[1] + b[2] - b[3])]
        x = int(np.uint32(state) * np.uint32(0xCBAC1FED))
        return float(lut[x >> 24])


@pytest.mark.parametrize("code", tf.CODES)
def test_code_values_match_scalar_definition(code, gen):
    lut = tf.default_hyb_lut() if code == "hyb" else None
    states = torch.randint(0, 1 << 16, (64,), generator=gen)
    got = tf.decode_states(states, code, lut)
    want = [_code_value_numpy(int(s), code, lut.float().numpy() if lut is not None else None)
            for s in states]
    assert got.tolist() == want


@pytest.mark.parametrize("code", tf.CODES)
def test_code_tables_are_gaussian_like(code):
    # a useful trellis code spreads 2^16 states over a bell-shaped, centred, non-degenerate set
    table = tf.code_table(code, tf.default_hyb_lut() if code == "hyb" else None).double()
    assert table.shape == ((1 << 16, 2) if code in tf.PAIR_CODES else (1 << 16,))
    for v in table.reshape(1 << 16, -1).t():            # each component of a 2-D code
        z = (v - v.mean()) / v.std()
        assert abs(v.mean().item()) < 0.05 * v.std().item()
        assert 2.0 < (z ** 4).mean().item() < 4.0      # kurtosis near a Gaussian's 3
        assert v.unique().numel() > 64
    if code in tf.PAIR_CODES:                            # components uncorrelated, equal spread
        c = torch.corrcoef(table.t())
        assert abs(c[0, 1].item()) < 0.02
        assert table[:, 0].std().item() == pytest.approx(table[:, 1].std().item(), rel=0.02)


def _mad2r_direct(s: int) -> tuple[int, int]:
    """1mad2r by its definition in plain Python integers (docs/formats-trellis.md)."""
    x = (s * 34038481 + 76625530) % 2 ** 32
    y = ((x >> 6) | (x << 26)) % 2 ** 32
    c0 = sum((x >> (8 * i)) & 255 for i in range(4)) - 510
    c1 = (y & 255) - ((y >> 8) & 255) + ((y >> 16) & 255) - (y >> 24)
    return c0, c1


def test_1mad2r_definition_is_pinned():
    # the stored artifacts depend on these exact values: a change of constant, rotation or sign order fails
    states = [0, 1, 2, 0x1234, 0x8000, 0xFFFF]
    got = tf.decode_states(torch.tensor(states), "1mad2r")
    assert got.dtype == torch.float32 and got.shape == (len(states), 2)
    assert [tuple(int(v) for v in row) for row in got.tolist()] == [_mad2r_direct(s) for s in states]
    assert got.tolist() == [[-185.0, -65.0], [-124.0, -15.0], [-63.0, 35.0], [224.0, 237.0], [224.0, -32.0],
                            [61.0, -45.0]]
    # component 0 is 1mad's value; component 1 is a signed sum in [-510, 510] (what the kernels bias by 510)
    table = tf.code_table("1mad2r")
    assert torch.equal(table[:, 0], tf.code_table("1mad"))
    assert table[:, 1].min().item() >= -510 and table[:, 1].max().item() <= 510


@pytest.mark.parametrize("code", tf.PAIR_CODES)
def test_pair_code_components_are_uncorrelated_with_byte_sum_variance(code):
    # over all 2^16 states: corr(c0, c1) ~ 0, and each component has the variance of a sum of 4 independent
    # uniform bytes, 4 (256^2 - 1) / 12 (signs do not change it); 2^16 i.i.d. samples would miss it by ~0.5%
    # rms, so 0.5% fails on a code whose bytes are not spread evenly
    table = tf.code_table(code).double()
    c = torch.corrcoef(table.t())
    assert abs(c[0, 1].item()) < 0.01
    var = table.var(dim=0, unbiased=False)
    for v in var.tolist():
        assert v == pytest.approx(4 * (256 ** 2 - 1) / 12, rel=5e-3)


# -- bitstreams and tail-biting ----------------------------------------------------------------
def _states_step_by_step(codes: list[int], K: int, L: int = 16) -> list[int]:
    """Direct shift register: start from the stream's last L-K bits, shift in K bits per step."""
    stream = "".join(format(c, f"0{K}b") for c in codes)
    s = int(stream[len(stream) - (L - K):], 2)
    out = []
    for c in codes:
        s = ((s << K) | c) & ((1 << L) - 1)
        out.append(s)
    return out


@pytest.mark.parametrize("K", BITS)
def test_decoder_matches_step_by_step_trellis(K, gen):
    codes = torch.randint(0, 1 << K, (3, 256), generator=gen)
    words = tf.pack_stream(codes, K)
    assert words.shape == (3, 8 * K) and words.dtype == torch.int32
    states = tf.stream_states(words, K)
    for b in range(3):
        assert states[b].tolist() == _states_step_by_step(codes[b].tolist(), K)
    assert torch.equal(tf.states_to_codes(states, K), codes)


@pytest.mark.parametrize("code", tf.PAIR_CODES)
@pytest.mark.parametrize("K", BITS)
def test_pair_code_reads_the_state_of_each_odd_step(K, code, gen):
    # pair codes: steps 2u and 2u+1 are the two components of the step-by-step state of step 2u+1
    codes = torch.randint(0, 1 << K, (2, 256), generator=gen)
    words = tf.pack_stream(codes, K)
    table = tf.code_table(code)
    for b in range(2):
        st = _states_step_by_step(codes[b].tolist(), K)
        want = [table[st[t | 1], t & 1].item() for t in range(256)]
        assert tf.path_values(tf.stream_states(words, K)[b], table).tolist() == want
        # the pair states read with 2K bits per step, and back to per-step states
        pairs = tf.stream_states(words, 2 * K)[b]
        assert pairs.tolist() == st[1::2]
        assert tf.pair_to_step_states(pairs[None], K)[0].tolist() == st


def test_stream_word_bit_order():
    # step 0's K bits are the most significant bits of word 0
    codes = torch.zeros(1, 256, dtype=torch.int64)
    codes[0, 0] = 0b101
    words = tf.pack_stream(codes, 3)
    assert (words[0, 0].item() & 0xFFFFFFFF) == 0b101 << 29
    assert int((words != 0).sum()) == 1


def test_tile_layout_convention():
    N, K = 32, 48
    w = torch.arange(N * K, dtype=torch.float32).reshape(N, K)
    tiles = tf.matrix_to_tiles(w)
    assert tiles.shape == (K // 16, N // 16, 256)
    tk, tn, kl, nl = 2, 1, 5, 9
    assert tiles[tk, tn, 16 * kl + nl] == w[16 * tn + nl, 16 * tk + kl]
    assert torch.equal(tf.tiles_to_matrix(tiles, N, K), w)


# -- Viterbi optimality against exhaustive search (small L) -----------------------------------
def _exhaustive(x: torch.Tensor, values: torch.Tensor, K: int, L: int, start_low=None):
    """Minimum cost over all (start state, code sequence) paths; optional tail-biting on start_low."""
    T = x.shape[0]
    M = 1 << (L - K)
    best = float("inf")
    starts = range(1 << L) if start_low is None else [p * M + start_low for p in range(1 << K)]
    seqs = torch.tensor(list(itertools.product(range(1 << K), repeat=T)))       # [P^T, T]
    for s0 in starts:
        s = torch.full((seqs.shape[0],), s0, dtype=torch.int64)
        cost = torch.zeros(seqs.shape[0], dtype=torch.float64)
        for t in range(T):
            s = ((s << K) | seqs[:, t]) & ((1 << L) - 1)
            cost += (x[t].double() - values[s].double()) ** 2
        if start_low is not None:
            cost[(s & (M - 1)) != start_low] = float("inf")
        best = min(best, cost.min().item())
    return best


def _path_cost(x, values, states):
    return ((x.double() - values[states].double()) ** 2).sum().item()


def _exhaustive_pairs(x: torch.Tensor, values: torch.Tensor, K: int, L: int):
    """Minimum over all circular streams of ``T*K`` bits (tail-biting) of the pair code's cost:
    ``x [T, 2]``, one state per pair step (``K`` bits each), 2-D values ``[2^L, 2]``."""
    T = x.shape[0]
    n = T * K
    streams = torch.arange(1 << n)
    cost = torch.zeros(1 << n, dtype=torch.float64)
    for u in range(T):
        end = (u + 1) * K                        # window of L bits ending at bit `end`, circular
        s = torch.zeros_like(streams)
        for i in range(L):
            bit = (end - L + i) % n
            s = (s << 1) | ((streams >> (n - 1 - bit)) & 1)
        cost += ((x[u].double() - values[s].double()) ** 2).sum(-1)
    return cost.min().item()


@pytest.mark.parametrize("K,L,T", [(2, 6, 5), (4, 8, 3)])
def test_viterbi_pairs_free_start_is_exact_and_tail_biting_paths_are_circular(K, L, T, gen):
    # 2-D values (pair codes), K bits per step of two weights: without tail-biting the search is
    # the exact optimum over all start states and code sequences; with it (default), the path is a
    # circular stream and never costs less than the best circular stream (exhaustive)
    values = torch.randn(1 << L, 2, generator=gen)
    x = torch.randn(2, T, 2, generator=gen)
    mask = (1 << L) - 1
    seqs = torch.tensor(list(itertools.product(range(1 << K), repeat=T)))
    for b in range(2):
        s = viterbi(x[b:b + 1], values, K, L, tail_biting=False)[0]
        assert torch.equal(s[1:], ((s[:-1] << K) | (s[1:] & ((1 << K) - 1))) & mask)
        got = ((x[b].double() - values[s].double()) ** 2).sum().item()
        best = float("inf")
        for s0 in range(1 << L):
            st = torch.full((seqs.shape[0],), s0, dtype=torch.int64)
            cost = torch.zeros(seqs.shape[0], dtype=torch.float64)
            for t in range(T):
                st = ((st << K) | seqs[:, t]) & mask
                cost += ((x[b, t].double() - values[st].double()) ** 2).sum(-1)
            best = min(best, cost.min().item())
        assert got == pytest.approx(best, rel=1e-9)
        s = viterbi(x[b:b + 1], values, K, L)[0]
        assert torch.equal(s, ((torch.roll(s, 1) << K) | (s & ((1 << K) - 1))) & mask)
        got = ((x[b].double() - values[s].double()) ** 2).sum().item()
        assert got >= _exhaustive_pairs(x[b], values, K, L) - 1e-9


@pytest.mark.parametrize("K,L,T", [(2, 6, 4), (4, 8, 3)])
def test_viterbi_pairs_with_fixed_shared_bits_are_exact(K, L, T, gen):
    # with the shared start/end bits given, the search is the exact optimum over those streams
    values = torch.randn(1 << L, 2, generator=gen)
    x = torch.randn(1, T, 2, generator=gen)
    M = 1 << (L - K)
    low = torch.randint(0, M, (1,), generator=gen)
    s = viterbi(x, values, K, L, tail_biting=True, start_low=low)[0]
    assert (s[-1] & (M - 1)).item() == low.item() and (s[0] >> K).item() == low.item()
    got = ((x[0].double() - values[s].double()) ** 2).sum().item()
    # brute force over start states with those low bits and all code sequences ending on them
    best = float("inf")
    seqs = torch.tensor(list(itertools.product(range(1 << K), repeat=T)))
    for p in range(1 << K):
        st = torch.full((seqs.shape[0],), p * M + low.item(), dtype=torch.int64)
        cost = torch.zeros(seqs.shape[0], dtype=torch.float64)
        for t in range(T):
            st = ((st << K) | seqs[:, t]) & ((1 << L) - 1)
            cost += ((x[0, t].double() - values[st].double()) ** 2).sum(-1)
        cost[(st & (M - 1)) != low.item()] = float("inf")
        best = min(best, cost.min().item())
    assert got == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("K,L,T", [(1, 4, 9), (2, 6, 6), (3, 6, 4)])
def test_viterbi_is_exact_optimum_free_start(K, L, T, gen):
    values = torch.randn(1 << L, generator=gen)
    x = torch.randn(2, T, generator=gen)
    states = viterbi(x, values, K, L, tail_biting=False)
    for b in range(2):
        s = states[b]
        assert torch.equal(s[1:], ((s[:-1] << K) | (s[1:] & ((1 << K) - 1))) & ((1 << L) - 1))
        assert _path_cost(x[b], values, s) == pytest.approx(_exhaustive(x[b], values, K, L), rel=1e-6)


@pytest.mark.parametrize("K,L,T", [(1, 4, 9), (2, 6, 6)])
def test_viterbi_is_exact_optimum_with_tail_biting_constraint(K, L, T, gen):
    values = torch.randn(1 << L, generator=gen)
    x = torch.randn(1, T, generator=gen)
    M = 1 << (L - K)
    low = torch.randint(0, M, (1,), generator=gen)
    states = viterbi(x, values, K, L, tail_biting=True, start_low=low)
    s = states[0]
    assert (s[0] >> K).item() == low.item() and (s[-1] & (M - 1)).item() == low.item()
    want = _exhaustive(x[0], values, K, L, start_low=low.item())
    assert _path_cost(x[0], values, s) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("K", BITS)
def test_viterbi_paths_are_tail_biting_streams(K, gen):
    # the path found for each tile must be exactly what its circular stream decodes to
    values = tf.code_table("3inst")
    x = torch.randn(1 if K == 2 else 2, 256, generator=gen) * values.std()
    states = viterbi(x, values, K)
    words = tf.pack_stream(tf.states_to_codes(states, K), K)
    assert torch.equal(tf.stream_states(words, K), states)


# -- the format end to end ---------------------------------------------------------------------
def _dense_hadamard(signs: torch.Tensor, block: int) -> torch.Tensor:
    D = signs.numel()
    h = hadamard.sylvester(block, torch.float64) / block ** 0.5
    return torch.block_diag(*[h] * (D // block)) @ torch.diag(signs.double())


def test_dequantize_is_inverse_rotations_of_decoded_tiles(gen):
    w = torch.randn(32, 48, generator=gen)
    qt = tm.quantize(w, "trellis2", method="viterbi", seed=3)
    U = _dense_hadamard(qt.tensors["su"], qt.meta["had_block_out"])
    V = _dense_hadamard(qt.tensors["sv"], qt.meta["had_block_in"])
    wt = qt.fmt.rotated_weight(qt).double()
    assert torch.allclose(qt.dequantize(torch.float64), U.t() @ wt @ V, rtol=0, atol=1e-12)
    assert qt.meta["had_block_out"] == 32 and qt.meta["had_block_in"] == 16


# Best scalar (Lloyd-Max) quantizer MSE on a unit Gaussian, a published constant: a trellis code
# that does not beat it is not doing its job.
LLOYD_MAX = {2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.mark.parametrize("bits,code", [(2, "3inst"), (3, "1mad"), (4, "hyb"), (2, "1mad2"), (4, "1mad2"),
                                       (2, "1mad2r"), (4, "1mad2r")])
def test_quantize_beats_best_scalar_quantizer(bits, code, gen):
    w = torch.randn(32, 32, generator=gen) * 0.02
    qt = tm.quantize(w, f"trellis{bits}", method="viterbi", code=code, seed=int(torch.randint(0, 99, (1,), generator=gen)))
    mse = ((qt.dequantize(torch.float64) - w.double()) ** 2).mean().item() / 0.02 ** 2
    assert mse < 0.85 * LLOYD_MAX[bits]
    assert qt.meta["code"] == code and qt.meta["method"] == "viterbi"


def test_stored_word_layout(gen):
    w = torch.randn(32, 32, generator=gen)
    qt = tm.quantize(w, "trellis2", method="viterbi", code="1mad")
    q = qt.tensors["qweight"]
    assert q.shape == (2, 16, 2)
    words = tf.qweight_to_words(q)              # tile order (tk, tn)
    assert torch.equal(words[1 * 2 + 0], q[1, :, 0]) and torch.equal(words[0 * 2 + 1], q[0, :, 1])
    assert torch.equal(tf.words_to_qweight(words.reshape(2, 2, 16)), q)


def test_group_scales_and_artifact_round_trip(tmp_path, gen):
    w = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    qt = tm.quantize(w, "trellis3", group_size=32, method="viterbi", code="hyb")
    assert qt.tensors["scales"].shape == (2, 16) and qt.tensors["lut"].dtype == torch.float16
    path = tmp_path / "t.safetensors"
    qt.save(path)
    back = QuantizedTensor.load(path)
    assert back.meta == qt.meta and back.group_size == 32
    assert torch.equal(back.dequantize(torch.float32), qt.dequantize(torch.float32))
    tensors = dict(qt.tensors)
    tensors["qweight"] = tensors["qweight"][:, :-1]
    with pytest.raises(FormatError, match="qweight"):
        QuantizedTensor.from_state(qt.header(), tensors)
    tensors = {k: v for k, v in qt.tensors.items() if k != "lut"}
    with pytest.raises(FormatError, match="lut"):
        QuantizedTensor.from_state(qt.header(), tensors)


def test_pair_code_artifact_round_trip_and_unknown_code(tmp_path, gen):
    # the code travels in the metadata; a loader that meets a code it does not decode says which it knows
    w = torch.randn(16, 32, generator=gen)
    qt = tm.quantize(w, "trellis2", method="viterbi", code="1mad2r")
    qt.save(tmp_path / "r.safetensors")
    back = QuantizedTensor.load(tmp_path / "r.safetensors")
    assert back.meta["code"] == "1mad2r" and back.meta == qt.meta
    assert torch.equal(back.dequantize(torch.float32), qt.dequantize(torch.float32))
    header = dict(qt.header())
    header["meta"] = header["meta"].replace('"1mad2r"', '"1mad3"')
    with pytest.raises(FormatError, match=r"unknown trellis code '1mad3'.*1mad2r"):
        QuantizedTensor.from_state(header, dict(qt.tensors))


def test_default_is_per_channel_and_bits_per_weight():
    w = torch.randn(16, 48)
    qt = tm.quantize(w, "trellis4", method="viterbi", chunk_tiles=2)
    assert qt.group_size == -1 and qt.tensors["scales"].shape == (1, 16)
    # 4 bits of codes + one fp16 scale per row + one int8 sign per row and per column
    assert qt.bits_per_weight == pytest.approx(4 + (16 * 16 + 8 * (16 + 48)) / (16 * 48))


def test_bad_arguments():
    w = torch.randn(32, 32)
    with pytest.raises(ValueError, match="viterbi"):
        tm.quantize(w, "trellis3")                       # rtn does not apply
    with pytest.raises(ValueError, match="multiples of 16"):
        tm.quantize(torch.randn(24, 32), "trellis3", method="viterbi")
    with pytest.raises(ValueError, match="code"):
        tm.quantize(w, "trellis3", method="viterbi", code="2mad")
    with pytest.raises(ValueError, match="ldlq"):
        tm.quantize(w, "trellis3", method="viterbi", hessian=torch.eye(32))
    with pytest.raises(ValueError, match="trellis2/3/4"):
        tm.quantize(w, "int4", method="viterbi")
    with pytest.raises(ValueError, match="hessian"):
        tm.quantize(w, "trellis3", method="ldlq")
    with pytest.raises(ValueError, match="group_size"):
        tm.quantize(torch.randn(32, 48), "trellis3", method="viterbi", group_size=32)


def test_hyb_table_training_lowers_distortion_and_travels_with_the_weight(tmp_path, gen):
    w = torch.randn(16, 16, generator=gen)
    plain = tm.quantize(w, "trellis4", method="viterbi", code="hyb")
    trained = tm.quantize(w, "trellis4", method="viterbi", code="hyb", lut_iters=1)
    assert not torch.equal(trained.tensors["lut"], tf.default_hyb_lut())
    mse = [((q.dequantize(torch.float64) - w.double()) ** 2).mean().item() for q in (plain, trained)]
    assert mse[1] < mse[0]
    trained.save(tmp_path / "h.safetensors")
    back = QuantizedTensor.load(tmp_path / "h.safetensors")
    assert torch.equal(back.dequantize(torch.float32), trained.dequantize(torch.float32))
    with pytest.raises(ValueError, match="lut_iters"):
        tm.quantize(w, "trellis4", method="viterbi", code="3inst", lut_iters=1)
