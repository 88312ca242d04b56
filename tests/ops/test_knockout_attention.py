"""knockout_attention: the reference against an explicit masked softmax, the Triton kernel against the reference
(error budget, odd shapes, GQA, decoding, padding), gradients, opcheck and argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DTYPES, OPCHECK_DTYPES, assert_within_budget, triton_device, triton_module
from tga_fast.ops import knockout_attention
from tga_fast.ops.kernels.knockout_attention import reference as ref

# name: (B, H, Hkv, Tq, Tk, d); every case gets random blocked keys, some get padding (see make_case).
SHAPES = {
    "prefill-gqa-d40": (2, 4, 2, 37, 37, 40),
    "decode-mqa-d72": (2, 3, 1, 1, 45, 72),
    "chunk-tq-lt-tk": (1, 2, 2, 19, 50, 16),
    "gqa-group-3": (1, 6, 2, 21, 21, 24),
}


def make_case(shape, dtype=torch.float32, seed=0, blocked="random", padding=False):
    batch, heads, kv_heads, num_queries, num_keys, dim = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, num_queries, dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, num_keys, dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, num_keys, dim, generator=gen).to(dtype)
    if blocked == "random":
        mask = torch.rand(batch, num_keys, generator=gen) < 0.3
        mask[:, 0] = True  # the first key and the last one blocked
        mask[:, -1] = True
    elif blocked == "all":
        mask = torch.ones(batch, num_keys, dtype=torch.bool)
    else:
        mask = torch.zeros(batch, num_keys, dtype=torch.bool)
    key_valid = None
    if padding:  # left padding of a different length per sample
        key_valid = torch.ones(batch, num_keys, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : 3 + 2 * b] = False
    return q, k, v, mask, key_valid


def explicit_attention(q, k, v, blocked, scale=None, key_valid=None):
    """The slow oracle: an additive mask built key by key, eager fp64 softmax, zeros for an empty row."""
    batch, heads, num_queries, dim = q.shape
    kv_heads, num_keys = k.shape[1], k.shape[2]
    scale = dim**-0.5 if scale is None else scale
    mask = torch.full((batch, num_queries, num_keys), float("-inf"), dtype=torch.float64)
    for b in range(batch):
        for i in range(num_queries):
            position = num_keys - num_queries + i
            for j in range(position + 1):
                if (key_valid is None or key_valid[b, j]) and (j == position or not blocked[b, j]):
                    mask[b, i, j] = 0.0
    kv_index = torch.arange(heads) // (heads // kv_heads)
    k64, v64 = k.double()[:, kv_index], v.double()[:, kv_index]
    scores = q.double() @ k64.transpose(-1, -2) * scale + mask[:, None]
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v64


def triton_forward(q, k, v, blocked, scale=None, key_valid=None, use_tma=None):
    device = triton_device()
    module = triton_module("knockout_attention")
    key_valid = None if key_valid is None else key_valid.to(device)
    q, k, v, blocked = (t.to(device) for t in (q, k, v, blocked))
    return module.knockout_attention(q, k, v, blocked, scale, key_valid, use_tma=use_tma).cpu()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("blocked", ["random", "all", "none"])
@pytest.mark.parametrize("padding", [False, True])
def test_reference_matches_explicit_softmax(shape, blocked, padding):
    q, k, v, mask, key_valid = make_case(SHAPES[shape], torch.float64, blocked=blocked, padding=padding)
    out = ref.knockout_attention(q, k, v, mask, 0.3, key_valid)
    torch.testing.assert_close(out, explicit_attention(q, k, v, mask, 0.3, key_valid))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_nothing_blocked_is_causal_sdpa(dtype, kv_heads):
    q, k, v, _, _ = make_case((2, 4, kv_heads, 23, 23, 32), dtype)
    nothing = torch.zeros(2, 23, dtype=torch.bool)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != 4)
    torch.testing.assert_close(knockout_attention(q, k, v, nothing), expected)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("padding", [False, True])
def test_triton_matches_reference(dtype, shape, padding):
    q, k, v, mask, key_valid = make_case(SHAPES[shape], dtype, seed=1, padding=padding)
    # K/V through TMA descriptors (Hopper) with padding, through pointers (older GPUs, unaligned strides) without.
    out = triton_forward(q, k, v, mask, None, key_valid, use_tma=padding)
    assert out.dtype == dtype and out.shape == q.shape
    oracle = ref.knockout_attention(q.float(), k.float(), v.float(), mask, None, key_valid)
    assert_within_budget(out, oracle, ref.knockout_attention(q, k, v, mask, None, key_valid), dtype)


@pytest.mark.triton
@pytest.mark.parametrize("blocked", ["all", "none"])
def test_triton_all_or_nothing_blocked(blocked):
    q, k, v, mask, _ = make_case(SHAPES["chunk-tq-lt-tk"], blocked=blocked, seed=2)
    torch.testing.assert_close(triton_forward(q, k, v, mask, 0.2), ref.knockout_attention(q, k, v, mask, 0.2))


@pytest.mark.parametrize("impl", ["reference", pytest.param("triton", marks=pytest.mark.triton)])
def test_rows_without_visible_keys_are_zeros(impl):
    q, k, v, mask, _ = make_case((2, 2, 1, 6, 20, 16), seed=3)
    key_valid = torch.ones(2, 20, dtype=torch.bool)
    key_valid[0] = False  # sample 0: every key is padding
    key_valid[1, 14:17] = False  # sample 1: queries 0..2 (positions 14..16) see blocked/padded keys at most
    mask[1] = True  # ... and everything before them is blocked, so their own key was their only one
    forward = ref.knockout_attention if impl == "reference" else triton_forward
    out = forward(q, k, v, mask, None, key_valid)
    assert not out.isnan().any()
    assert (out[0] == 0).all() and (out[1, :, :3] == 0).all()
    assert (out[1, :, 3:].abs().sum(-1) > 0).all()


@pytest.mark.triton
def test_triton_strided_inputs():
    """q/k/v as HF hands them over: [B, T, H, d] transposed to [B, H, T, d], and a strided mask."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 17, 4, 24, generator=gen).transpose(1, 2)
    k = torch.randn(2, 17, 2, 24, generator=gen).transpose(1, 2)
    v = torch.randn(2, 17, 2, 24, generator=gen).transpose(1, 2)
    mask = (torch.rand(2, 34, generator=gen) < 0.4)[:, ::2]
    expected = ref.knockout_attention(q, k, v, mask)
    for use_tma in (True, False):
        torch.testing.assert_close(triton_forward(q, k, v, mask, use_tma=use_tma), expected)


@pytest.mark.triton
def test_triton_nan_propagates_without_crash():
    q, k, v, mask, _ = make_case((1, 2, 2, 8, 8, 16), seed=5, blocked="none")
    v[0, 0, 3, 0] = float("nan")  # key 3 of kv head 0, seen by queries 3..7
    out = triton_forward(q, k, v, mask)
    # As in SDPA and every flash kernel, queries that share the NaN's tile get it too (0 * NaN); other heads do not.
    assert out[0, 0, 3:, 0].isnan().all() and not out[0, 1].isnan().any()


def test_gradients_through_the_registered_backward():
    q, k, v, mask, key_valid = make_case((2, 2, 1, 4, 7, 3), torch.float64, seed=6, padding=True)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    op = torch.ops.tga_fast.knockout_attention  # the public function takes fp32/fp16/bf16 only
    assert torch.autograd.gradcheck(lambda q, k, v: op(q, k, v, mask, None, key_valid), inputs)
    grad = torch.randn(q.shape, dtype=torch.float64)
    expected = torch.autograd.grad(ref.knockout_attention(q, k, v, mask, None, key_valid), inputs, grad)
    actual = ref.knockout_attention_backward(grad, q, k, v, mask, None, key_valid)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
@pytest.mark.parametrize("padding", [False, True])
def test_opcheck(dtype, padding):
    q, k, v, mask, key_valid = make_case((2, 4, 2, 5, 9, 8), dtype, seed=7, padding=padding)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), mask, 0.5, key_valid)
    torch.library.opcheck(torch.ops.tga_fast.knockout_attention.default, args)
    grad = torch.randn(q.shape).to(dtype)
    backward_args = (grad, q.detach(), k.detach(), v.detach(), mask, 0.5, key_valid)  # no double backward
    torch.library.opcheck(torch.ops.tga_fast.knockout_attention_backward.default, backward_args)


Q, K, V = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
BLOCKED = torch.zeros(2, 5, dtype=torch.bool)


@pytest.mark.parametrize(
    "args, kwargs, error, needle",
    [
        ((Q[0], K, V, BLOCKED), {}, ValueError, "q must have shape [B, H, Tq, d]"),
        ((Q.double(), K, V, BLOCKED), {}, TypeError, "q must be float32"),
        ((Q, K.half(), V, BLOCKED), {}, TypeError, "k must have q's dtype"),
        ((Q, K[:, :1].expand(2, 3, 5, 8), V, BLOCKED), {}, ValueError, "k has 3 heads, which must divide q's 4"),
        ((Q, K[..., :4], V, BLOCKED), {}, ValueError, "k must have shape [B, Hkv, Tk, d]"),
        ((Q, K[:, :, :2], V[:, :, :2], BLOCKED[:, :2]), {}, ValueError, "q has 3 positions but k only 2"),
        ((Q, K, V[:, :1], BLOCKED), {}, ValueError, "v must have k's shape"),
        ((Q, K, "v", BLOCKED), {}, TypeError, "v must be a torch.Tensor"),
        ((Q, K, V, BLOCKED.int()), {}, TypeError, "blocked must be bool"),
        ((Q, K, V, BLOCKED[:, :4]), {}, ValueError, "blocked must have shape [B, Tk] = [2, 5]"),
        ((Q, K, V, BLOCKED), {"key_valid": BLOCKED[:1]}, ValueError, "key_valid must have shape [B, Tk]"),
        ((Q, K, V, BLOCKED.to("meta")), {}, ValueError, "blocked is on meta but k is on cpu"),
        ((Q, K, V, BLOCKED), {"scale": "1"}, TypeError, "scale must be a float"),
    ],
)
def test_rejects_bad_arguments(args, kwargs, error, needle):
    with pytest.raises(error) as info:
        knockout_attention(*args, **kwargs)
    assert needle in str(info.value)


def test_meta_tensors_and_empty_queries():
    meta = [t.to("meta") for t in (Q, K, V, BLOCKED)]
    out = knockout_attention(*meta)
    assert out.shape == Q.shape and out.device.type == "meta"
    assert knockout_attention(Q[:, :, :0], K, V, BLOCKED).shape == (2, 4, 0, 8)
