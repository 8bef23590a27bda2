"""lasp.linear_attention against a float64 PyTorch reference of the recurrence (MATH.md §1), on fresh random
shapes: outputs, final states and every gradient within 1e-5 relative (‖x − ref‖ / ‖ref‖); gradcheck on small
shapes; errors that name the tensor."""
import math
import os
import random
import zlib

import pytest
import torch

import lasp

# fresh inputs on every run, each case's seed in its failure message (LASP_TEST_SEED=N repeats a run: a case's
# seed is N + a hash of its parameters)
SEED = int(os.environ.get("LASP_TEST_SEED", random.randrange(2**31)))


def reference(q, k, v, slopes, state=None):
    """o, final state of S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, in float64 (state: decayed to the next
    position, as the op returns it)."""
    B, T, H, d = q.shape
    e = v.shape[3]
    lam = torch.exp(-slopes.double()).view(1, H, 1, 1)
    S = torch.zeros(B, H, d, e, dtype=torch.float64) if state is None else state.double() / lam
    outs = []
    for t in range(T):
        S = lam * S + k[:, t].double().unsqueeze(-1) * v[:, t].double().unsqueeze(-2)
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t].double(), S))
    return torch.stack(outs, 1), lam * S


def rel(x, ref):
    return (x.double() - ref.double()).norm().item() / max(ref.double().norm().item(), 1e-300)


# one token over four heads, not one: a single token's output is (q·k)·v, one dot product whose cancellation
# f32 cannot bound relative to it (a few runs in a hundred would fail), while four heads' norms dilute it
SHAPES = [(1, 1, 4, 16, 16), (2, 37, 3, 16, 32), (1, 130, 2, 32, 32), (2, 64, 4, 64, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_backward(shape, with_state):
    B, T, H, d, e = shape
    seed = (SEED + zlib.crc32(repr((shape, with_state)).encode())) % 2**31
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, T, H, d, generator=g) / math.sqrt(d)).requires_grad_()
    k = torch.randn(B, T, H, d, generator=g).requires_grad_()
    v = torch.randn(B, T, H, e, generator=g).requires_grad_()
    slopes = torch.tensor([0.0, 0.05, 2.0, 30.0][:H] + [0.1] * max(0, H - 4))  # no decay .. λ^T underflowing
    s0 = torch.randn(B, H, d, e, generator=g).requires_grad_() if with_state else None
    o, st = lasp.linear_attention(q, k, v, slopes, s0, output_final_state=True)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    sd = s0.detach().double().requires_grad_() if with_state else None
    o_ref, st_ref = reference(qd, kd, vd, slopes, sd)
    assert rel(o, o_ref) < 1e-5 and rel(st, st_ref) < 1e-5, "seed %d" % seed
    do, dst = torch.randn_like(o), torch.randn_like(st)
    (o * do).sum().add((st * dst).sum()).backward()
    (o_ref * do.double()).sum().add((st_ref * dst.double()).sum()).backward()
    for name, a, b in (("dq", q.grad, qd.grad), ("dk", k.grad, kd.grad), ("dv", v.grad, vd.grad)):
        assert rel(a, b) < 1e-5, "%s, seed %d" % (name, seed)
    if with_state:
        assert rel(s0.grad, sd.grad) < 1e-5, "seed %d" % seed


def test_chained_calls_equal_one():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 50, 2, 16, generator=g) for _ in range(3))
    slopes = torch.tensor([0.1, 1.0])
    o, _ = lasp.linear_attention(q, k, v, slopes, output_final_state=True)
    o1, s1 = lasp.linear_attention(q[:, :20], k[:, :20], v[:, :20], slopes, output_final_state=True)
    o2 = lasp.linear_attention(q[:, 20:], k[:, 20:], v[:, 20:], slopes, s1)
    assert rel(torch.cat([o1, o2], 1), o) < 1e-6


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(1, 5, 2, 16, generator=g, dtype=torch.float64).mul(0.5).requires_grad_() for _ in range(3)]
    s0 = torch.randn(1, 2, 16, 16, generator=g, dtype=torch.float64).mul(0.5).requires_grad_()
    slopes = torch.tensor([0.2, 1.5], dtype=torch.float64)
    fn = lambda q, k, v, s: lasp.linear_attention(q, k, v, slopes, s, output_final_state=True)
    # the op computes in float32: finite differences at its precision
    assert torch.autograd.gradcheck(fn, (*args, s0), eps=1e-2, atol=1e-3, rtol=1e-2)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(9)
    q = torch.randn(1, 2, 8, 16, generator=g).transpose(1, 2)  # [1, 8, 2, 16], not contiguous
    k, v = torch.randn(1, 8, 2, 16, generator=g), torch.randn(1, 8, 2, 16, generator=g)
    slopes = torch.tensor([0.3, 0.7])
    assert not q.is_contiguous()
    assert rel(lasp.linear_attention(q, k, v, slopes), reference(q, k, v, slopes)[0]) < 1e-5


@pytest.mark.parametrize("bad, words", [
    (dict(k=torch.zeros(1, 4, 2, 8)), ["k is", "must match"]),
    (dict(slopes=torch.tensor([0.1, -1.0])), ["slopes", "≥ 0"]),
    (dict(slopes=torch.tensor([0.1])), ["slopes is", "one per head"]),
    (dict(q=torch.zeros(1, 4, 2, 16, dtype=torch.float16)), ["q is", "float32"]),
    (dict(q=torch.zeros(4, 2, 16)), ["[B, T, H, d]"]),
    (dict(initial_state=torch.zeros(1, 2, 16, 8)), ["initial_state is"]),
])
def test_errors_name_the_tensor(bad, words):
    a = dict(q=torch.zeros(1, 4, 2, 16), k=torch.zeros(1, 4, 2, 16), v=torch.zeros(1, 4, 2, 16),
             slopes=torch.tensor([0.1, 0.2]), initial_state=None)
    a.update(bad)
    with pytest.raises((ValueError, TypeError)) as info:
        lasp.linear_attention(a["q"], a["k"], a["v"], a["slopes"], a["initial_state"])
    for w in words:
        assert w in str(info.value)


def test_slopes_checked_again_when_changed():
    # the slopes last found valid are not read back again, until they change in place or another tensor comes
    q = torch.zeros(1, 4, 2, 16)
    slopes = torch.tensor([0.1, 0.2])
    lasp.linear_attention(q, q, q, slopes)
    lasp.linear_attention(q, q, q, slopes)
    slopes[1] = -1.0
    with pytest.raises(ValueError, match="≥ 0"):
        lasp.linear_attention(q, q, q, slopes)
    with pytest.raises(ValueError, match="≥ 0"):
        lasp.linear_attention(q, q, q, torch.tensor([0.1, float("nan")]))


def test_library_error_is_an_exception():
    # a head dim the op does not support passes the Python checks and is refused by the library
    q = torch.zeros(1, 4, 1, 12)
    with pytest.raises(lasp.LaspError) as info:
        lasp.linear_attention(q, q, q, torch.tensor([0.1]))
    assert "head dim" in str(info.value) or "12" in str(info.value)


# ---- CUDA tensors (run where PyTorch sees a GPU: `make test-gpu`) ---------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
TOL_CUDA = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}  # the CUDA op's tests' bounds


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
# one token: four heads, since one head's output is a single dot product q·k, whose relative error the f32
# kernels' bf16 hi + lo split cannot bound where the products nearly cancel
@pytest.mark.parametrize("shape", [(1, 1, 4, 64, 64), (2, 300, 3, 64, 64), (1, 1000, 2, 128, 128), (2, 77, 2, 32, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_cuda_forward_backward(dtype, shape, with_state):
    B, T, H, d, e = shape
    seed = (SEED + zlib.crc32(repr((shape, with_state, dtype)).encode())) % 2**31
    g = torch.Generator().manual_seed(seed)
    host = [torch.randn(B, T, H, d, generator=g) / math.sqrt(d), torch.randn(B, T, H, d, generator=g),
            torch.randn(B, T, H, e, generator=g)]
    q, k, v = (x.to(dtype).cuda().requires_grad_() for x in host)
    slopes = torch.tensor([0.0, 0.05, 2.0][:H] + [0.1] * max(0, H - 3))
    s0 = torch.randn(B, H, d, e, generator=g).cuda().requires_grad_() if with_state else None
    o, st = lasp.linear_attention(q, k, v, slopes.cuda(), s0, output_final_state=True)
    assert o.dtype == dtype and o.is_cuda and st.dtype == torch.float32
    # the reference from the same (rounded) inputs, in float64 on the CPU
    qd, kd, vd = (x.detach().cpu().double().requires_grad_() for x in (q, k, v))
    sd = s0.detach().cpu().double().requires_grad_() if with_state else None
    o_ref, st_ref = reference(qd, kd, vd, slopes, sd)
    tol = TOL_CUDA[dtype]
    assert rel(o.cpu(), o_ref) < tol and rel(st.cpu(), st_ref) < tol, "seed %d" % seed
    do, dst = torch.randn(o.shape, generator=g), torch.randn(st.shape, generator=g)
    (o.float() * do.cuda()).sum().add((st * dst.cuda()).sum()).backward()
    (o_ref * do.double()).sum().add((st_ref * dst.double()).sum()).backward()
    for name, a, b in (("dq", q.grad, qd.grad), ("dk", k.grad, kd.grad), ("dv", v.grad, vd.grad)):
        assert a.dtype == dtype and rel(a.cpu(), b) < tol, "%s, seed %d" % (name, seed)
    if with_state:
        assert rel(s0.grad.cpu(), sd.grad) < tol, "seed %d" % seed


@cuda
def test_cuda_runs_on_the_current_stream():
    """Work queued on a side stream before and after the call is ordered with it, without a synchronisation."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 4096, 4, 64, generator=g).cuda() for _ in range(3))
    slopes = torch.tensor([0.01, 0.1, 0.5, 1.0]).cuda()
    want = lasp.linear_attention(q, k, v, slopes)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q2 = q * 2  # made on the side stream just before the call
        o = lasp.linear_attention(q2, k, v, slopes) * 0.5
    torch.cuda.current_stream().wait_stream(side)
    assert rel(o, want) < 1e-5


@cuda
def test_cuda_errors():
    q = torch.zeros(1, 4, 2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(TypeError) as info:
        lasp.linear_attention(q, q.float(), q, torch.tensor([0.1, 0.2], device="cuda"))
    assert "k is" in str(info.value)
    with pytest.raises(ValueError) as info:
        lasp.linear_attention(q, q, q, torch.tensor([0.1, 0.2]))
    assert "slopes is on cpu" in str(info.value)


@pytest.mark.skipif(not hasattr(getattr(torch, "library", None), "custom_op"), reason="PyTorch < 2.4: no custom_op")
def test_compiles_as_one_graph():
    """torch.compile(fullgraph=True) fails on a graph break: the registered op keeps the graph whole, forward and
    backward (aot_eager: the traced graph run as is, no code generation needed)."""
    assert lasp.ops._OP is not None, "lasp::linear_attention was not registered"
    g = torch.Generator().manual_seed(13)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 64, 2, 32, generator=g).to(dev).requires_grad_() for _ in range(3))
    slopes = torch.tensor([0.1, 0.5]).to(dev)

    def f(q, k, v):
        return (lasp.linear_attention(q * 1.5, k, v, slopes) ** 2).sum()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    loss.backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    f(q, k, v).backward()
    for a, t in zip(grads, (q, k, v)):
        assert rel(a, t.grad) < 1e-6
