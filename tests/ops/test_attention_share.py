"""attention_share: the reference against the full softmax of an explicit T x T computation, the Triton kernel
against the reference (error budget, GQA, unsorted and repeated rows, padding), gradients, opcheck, errors."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DTYPES, OPCHECK_DTYPES, assert_within_budget, triton_device, triton_module
from tga_fast.ops import attention_share
from tga_fast.ops.kernels.attention_share import reference as ref

# name: (B, H, Hkv, T, d, R)
SHAPES = {
    "gqa-d40": (2, 4, 2, 37, 40, 3),
    "mqa-d72-last-row": (2, 3, 1, 45, 72, 1),
    "mha-many-rows": (1, 2, 2, 33, 16, 20),
    "gqa-group-3": (1, 6, 2, 21, 24, 2),
}


def make_case(shape, dtype=torch.float32, seed=0, padding=False):
    batch, heads, kv_heads, seq_len, dim, num_rows = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, seq_len, dim, generator=gen).to(dtype)
    key_set = torch.rand(batch, seq_len, generator=gen) < 0.3
    key_set[:, 0] = True
    rows = torch.randint(0, seq_len, (batch, num_rows), generator=gen)  # unsorted, may repeat
    rows[:, -1] = seq_len - 1  # the last position: the usual request
    rows[0, 0] = 0
    key_valid = None
    if padding:  # left padding; sample 0's row 0 then sees no key at all
        key_valid = torch.ones(batch, seq_len, dtype=torch.bool)
        for b in range(batch):
            key_valid[b, : 3 + 2 * b] = False
    return q, k, key_set, rows, key_valid


def explicit_share(q, k, key_set, rows, scale=None, key_valid=None):
    """The slow oracle: every row's full T x T causal softmax (fp64, additive mask), then the requested rows."""
    batch, heads, seq_len, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    kv_index = torch.arange(heads) // (heads // k.shape[1])
    mask = torch.full((batch, seq_len, seq_len), float("-inf"), dtype=torch.float64)
    for b in range(batch):
        for i in range(seq_len):
            for j in range(i + 1):
                if key_valid is None or key_valid[b, j]:
                    mask[b, i, j] = 0.0
    scores = q.double() @ k.double()[:, kv_index].transpose(-1, -2) * scale + mask[:, None]
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # [B, H, T, T]
    share = (probs * key_set[:, None, None, :]).sum(-1)  # [B, H, T]
    return torch.stack([share[b][:, rows[b]] for b in range(batch)])


def triton_share(q, k, key_set, rows, scale=None, key_valid=None):
    device = triton_device()
    module = triton_module("attention_share")
    key_valid = None if key_valid is None else key_valid.to(device)
    q, k, key_set, rows = (t.to(device) for t in (q, k, key_set, rows))
    return module.attention_share(q, k, key_set, rows, scale, key_valid).cpu()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("padding", [False, True])
def test_reference_matches_explicit_softmax(shape, padding):
    q, k, key_set, rows, key_valid = make_case(SHAPES[shape], torch.float64, padding=padding)
    share = ref.attention_share(q, k, key_set, rows, 0.4, key_valid)
    torch.testing.assert_close(share, explicit_share(q, k, key_set, rows, 0.4, key_valid))


def test_empty_and_full_key_sets():
    q, k, key_set, rows, key_valid = make_case(SHAPES["gqa-d40"], padding=True)
    nothing = attention_share(q, k, torch.zeros_like(key_set), rows, key_valid=key_valid)
    everything = attention_share(q, k, torch.ones_like(key_set), rows, key_valid=key_valid)
    assert (nothing == 0).all()
    assert (everything[0, :, 0] == 0).all()  # sample 0's row 0 sees no key: share 0, not NaN
    torch.testing.assert_close(everything[1], torch.ones_like(everything[1]))


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("padding", [False, True])
def test_triton_matches_reference(dtype, shape, padding):
    q, k, key_set, rows, key_valid = make_case(SHAPES[shape], dtype, seed=1, padding=padding)
    share = triton_share(q, k, key_set, rows, None, key_valid)
    assert share.dtype == torch.float32 and share.shape == (q.shape[0], q.shape[1], rows.shape[1])
    assert not share.isnan().any()
    oracle = ref.attention_share(q.float(), k.float(), key_set, rows, None, key_valid)
    assert_within_budget(share, oracle, ref.attention_share(q, k, key_set, rows, None, key_valid), dtype)


@pytest.mark.triton
def test_triton_strided_inputs_and_rows():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 19, 4, 24, generator=gen).transpose(1, 2)
    k = torch.randn(2, 19, 2, 24, generator=gen).transpose(1, 2)
    key_set = (torch.rand(2, 38, generator=gen) < 0.4)[:, ::2]
    rows = torch.tensor([[18, 3, 7, 0], [5, 5, 18, 11]]).t().contiguous().t()  # column-major [B, R]
    expected = ref.attention_share(q, k, key_set, rows, 0.3)
    torch.testing.assert_close(triton_share(q, k, key_set, rows, 0.3), expected)


def test_gradients_through_the_registered_backward():
    q, k, key_set, rows, key_valid = make_case((2, 2, 1, 7, 3, 3), torch.float64, seed=3, padding=True)
    rows[1] = torch.tensor([6, 6, 4])  # a repeated row: its query gradient is the sum
    q.requires_grad_(), k.requires_grad_()
    op = torch.ops.tga_fast.attention_share  # the public function takes fp32/fp16/bf16 only
    assert torch.autograd.gradcheck(lambda q, k: op(q, k, key_set, rows, None, key_valid), (q, k))
    grad = torch.randn(2, 2, 3, dtype=torch.float64)
    expected = torch.autograd.grad(ref.attention_share(q, k, key_set, rows, None, key_valid), (q, k), grad)
    actual = ref.attention_share_backward(grad, q, k, key_set, rows, None, key_valid)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
@pytest.mark.parametrize("padding", [False, True])
def test_opcheck(dtype, padding):
    q, k, key_set, rows, key_valid = make_case((2, 4, 2, 9, 8, 3), dtype, seed=4, padding=padding)
    args = (q.requires_grad_(), k.requires_grad_(), key_set, rows, 0.5, key_valid)
    torch.library.opcheck(torch.ops.tga_fast.attention_share.default, args)
    backward_args = (torch.randn(2, 4, 3), q.detach(), k.detach(), key_set, rows, 0.5, key_valid)
    torch.library.opcheck(torch.ops.tga_fast.attention_share_backward.default, backward_args)


Q, K = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
KEY_SET = torch.zeros(2, 5, dtype=torch.bool)
ROWS = torch.tensor([[4], [2]])


@pytest.mark.parametrize(
    "args, kwargs, error, needle",
    [
        ((Q[0], K, KEY_SET, ROWS), {}, ValueError, "q must have shape [B, H, Tq, d]"),
        ((Q, K.bfloat16(), KEY_SET, ROWS), {}, TypeError, "k must have q's dtype"),
        ((Q, K[:, :, :4], KEY_SET[:, :4], ROWS), {}, ValueError, "k must cover q's 5 positions"),
        ((Q, K[:, :1].expand(2, 3, 5, 8), KEY_SET, ROWS), {}, ValueError, "k has 3 heads, which must divide"),
        ((Q, K, KEY_SET.float(), ROWS), {}, TypeError, "key_set must be bool"),
        ((Q, K, KEY_SET[0], ROWS), {}, ValueError, "key_set must have shape [B, Tk] = [2, 5]"),
        ((Q, K, KEY_SET, ROWS.int()), {}, TypeError, "rows must be int64"),
        ((Q, K, KEY_SET, ROWS[0]), {}, ValueError, "rows must have shape [B, R]"),
        ((Q, K, KEY_SET, torch.tensor([[4], [5]])), {}, ValueError, "rows[1, 0] = 5 is outside [0, 5)"),
        ((Q, K, KEY_SET, torch.tensor([[-1], [0]])), {}, ValueError, "rows[0, 0] = -1 is outside [0, 5)"),
        ((Q, K, KEY_SET, ROWS.to("meta")), {}, ValueError, "rows is on meta but k is on cpu"),
        ((Q, K, KEY_SET, ROWS), {"key_valid": KEY_SET.int()}, TypeError, "key_valid must be bool"),
        ((Q, K, KEY_SET, ROWS), {"scale": True}, TypeError, "scale must be a float"),
    ],
)
def test_rejects_bad_arguments(args, kwargs, error, needle):
    with pytest.raises(error) as info:
        attention_share(*args, **kwargs)
    assert needle in str(info.value)


def test_meta_tensors_and_no_rows():
    share = attention_share(Q.to("meta"), K.to("meta"), KEY_SET.to("meta"), ROWS.to("meta"))
    assert share.shape == (2, 4, 1) and share.dtype == torch.float32
    assert attention_share(Q, K, KEY_SET, ROWS[:, :0]).shape == (2, 4, 0)
