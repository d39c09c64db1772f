"""Models: shapes, seeded initialisation, causality, exact Hessians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.params import get_flat_params, set_flat_params
from sharpdim.errors import SharpdimError
from sharpdim.training.losses import accuracy, cross_entropy_loss, mse_loss
from sharpdim.training.models import DeepScalarLinear, build_mlp, build_transformer


def test_mlp_structure_and_init():
    model = build_mlp(5, 3, width=7, depth=2, activation="relu", dtype=torch.float64)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 7), (7, 3)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == 2
    for m in linears:
        bound = 1 / math.sqrt(m.in_features)
        assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
        assert m.weight.dtype == torch.float64
    assert model(torch.zeros(4, 5, dtype=torch.float64)).shape == (4, 3)
    assert model(torch.zeros(4, 1, 5, dtype=torch.float64)).shape == (4, 3)  # flattened


def test_mlp_seeds_bias_depth_activation():
    a, b, c = (build_mlp(4, 2, width=3, seed=s) for s in (1, 1, 2))
    fa, fb, fc = (get_flat_params(list(m.parameters())) for m in (a, b, c))
    assert torch.equal(fa, fb) and not torch.equal(fa, fc)
    # same values whatever the dtype: drawn in float64 then cast
    d = build_mlp(4, 2, width=3, seed=1, dtype=torch.float64)
    torch.testing.assert_close(get_flat_params(list(d.parameters())).float(), fa)
    no_bias = build_mlp(4, 2, width=3, bias=False)
    assert all(m.bias is None for m in no_bias if isinstance(m, nn.Linear))
    linear = build_mlp(4, 2, depth=0)
    assert sum(isinstance(m, nn.Linear) for m in linear) == 1
    assert isinstance(build_mlp(4, 2, activation="gelu")[2], nn.GELU)
    with pytest.raises(SharpdimError, match="activation"):
        build_mlp(4, 2, activation="sigmoid")
    with pytest.raises(SharpdimError, match="depth"):
        build_mlp(4, 2, depth=-1)


def test_builders_leave_global_rng_alone_and_keep_their_values():
    # values recorded before the builders were wrapped in fork_rng: they must not change
    torch.manual_seed(5)
    before = torch.get_rng_state()
    mlp = build_mlp(5, 3, width=4, depth=2, seed=7, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), before)
    flat = get_flat_params(list(mlp.parameters()))
    assert flat.numel() == 59
    assert flat.sum().item() == 1.898126918822527
    assert (flat**2).sum().item() == 5.774634852887872
    assert flat[:3].tolist() == [-0.1973281353712082, -0.20241449773311615, 0.3238658010959625]
    assert flat[-1].item() == 0.3597777783870697
    tf = build_transformer(7, seq_len=3, d_model=8, num_heads=2, seed=3, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), before)
    flat = get_flat_params(list(tf.parameters()))
    assert flat.numel() == 1031
    assert flat.sum().item() == 19.816725781420246
    assert (flat**2).sum().item() == 60.91127057580402
    assert flat[:3].tolist() == [-0.07698582112789154, 0.05185819789767265, 0.23655590415000916]


@pytest.mark.parametrize("default", [torch.float64, torch.bfloat16])
def test_a_seed_gives_the_same_model_whatever_the_default_dtype(default: torch.dtype) -> None:
    """The builders initialise in float32 whatever ``torch.get_default_dtype()`` is; a float64
    default gave weights differing by 1e-8 and a bfloat16 one weights rounded to 3 digits."""
    expected = [
        get_flat_params(list(build(dtype=torch.float64).parameters()))
        for build in (_small_mlp, _small_transformer)
    ]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        got = [
            get_flat_params(list(build(dtype=torch.float64).parameters()))
            for build in (_small_mlp, _small_transformer)
        ]
    finally:
        torch.set_default_dtype(previous)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
    assert torch.equal(expected[0].float().double(), expected[0])  # float32 numbers


def _small_mlp(dtype: torch.dtype) -> torch.nn.Module:
    return build_mlp(5, 3, width=4, depth=2, seed=7, dtype=dtype)


def _small_transformer(dtype: torch.dtype) -> torch.nn.Module:
    return build_transformer(7, seq_len=3, d_model=8, num_heads=2, seed=3, dtype=dtype)


def test_transformer_shapes_and_causality():
    model = build_transformer(
        8, 5, seq_len=4, d_model=8, num_heads=2, num_layers=2, last_only=False, dtype=torch.float64
    )
    tokens = torch.tensor([[1, 2, 3, 4], [0, 7, 7, 1]])
    out = model(tokens)
    assert out.shape == (2, 5, 4)  # (n, classes, positions)
    changed = tokens.clone()
    changed[:, 3] = 6
    torch.testing.assert_close(model(changed)[..., :3], out[..., :3])  # the future is masked
    assert not torch.allclose(model(changed)[..., 3], out[..., 3])
    last = build_transformer(
        8, 5, seq_len=4, d_model=8, num_heads=2, num_layers=2, dtype=torch.float64
    )
    torch.testing.assert_close(last(tokens), out[..., -1])  # same seed, same weights
    # the package's per-token loss and accuracy read that layout (it took T as the classes)
    targets = torch.tensor([[2, 0, 4, 1], [3, 3, 0, 2]])
    per_token = torch.nn.functional.cross_entropy(
        out.transpose(1, 2).reshape(-1, 5), targets.reshape(-1)
    )
    torch.testing.assert_close(cross_entropy_loss(model, (tokens, targets)), per_token)
    hits = (out.argmax(1) == targets).double().mean()
    assert accuracy(model, (tokens, targets)) == pytest.approx(float(hits))
    with pytest.raises(SharpdimError, match="divisible"):
        build_transformer(8, d_model=6, num_heads=4)
    with pytest.raises(SharpdimError, match="tokens of shape"):
        model(torch.zeros(2, 5, dtype=torch.long))
    for bad in (8, -1):  # were IndexError: index out of range in self
        with pytest.raises(SharpdimError, match=r"^tokens must lie in 0..7 \(vocab_size=8\)"):
            model(torch.tensor([[1, 2, bad, 4]]))


def test_transformer_hessian_vector_products_match_finite_differences():
    # Double backward through the hand-written attention and LayerNorm, checked against
    # central differences of the gradient (error O(h^2) ~ 1e-10 in float64).
    model = build_transformer(5, 5, seq_len=3, d_model=4, num_heads=2, d_mlp=8, dtype=torch.float64)
    batch = (torch.tensor([[0, 1, 4], [2, 3, 4], [4, 4, 4]]), torch.tensor([1, 0, 3]))
    params = list(model.parameters())
    w0 = get_flat_params(params)
    block = torch.randn(
        w0.numel(), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    hv = HessianOperator(model, cross_entropy_loss, batch) @ block

    def gradient(w: torch.Tensor) -> torch.Tensor:
        set_flat_params(params, w)
        loss = cross_entropy_loss(model, batch)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    h = 1e-5
    for j in range(3):
        fd = (gradient(w0 + h * block[:, j]) - gradient(w0 - h * block[:, j])) / (2 * h)
        torch.testing.assert_close(hv[:, j], fd, rtol=1e-6, atol=1e-8)
    set_flat_params(params, w0)
    sym = block.T @ hv
    torch.testing.assert_close(sym, sym.T, rtol=1e-10, atol=1e-12)


def test_deep_scalar_linear_loss_and_exact_hessian():
    net = DeepScalarLinear((2.0, 0.3, 2.0, 0.3))
    theta = torch.tensor([2.0, 0.3, 2.0, 0.3], dtype=torch.float64)
    assert float(mse_loss(net, net.batch()).detach()) == pytest.approx(
        0.5 * (1 - 0.36) ** 2, rel=1e-14
    )
    # analytic Hessian of 0.5 (1 - f)^2, f = prod theta: H = grad f grad f^T + (f - 1) Hess f
    f = theta.prod()
    grad = torch.stack([f / t for t in theta])
    hess_f = torch.stack(
        [
            torch.stack([0 * f if i == j else f / (theta[i] * theta[j]) for j in range(4)])
            for i in range(4)
        ]
    )
    expected = torch.outer(grad, grad) + (f - 1) * hess_f
    torch.testing.assert_close(dense_hessian(net, mse_loss, net.batch()), expected)
    # at a minimum the only non-zero eigenvalue is sum_i prod_{j != i} theta_j^2
    net.set_parameters((1.0, 2.0, 0.5, 1.0))
    eig = torch.linalg.eigvalsh(dense_hessian(net, mse_loss, net.batch()))
    assert float(eig[-1]) == pytest.approx(1.0 + 0.25 + 4.0 + 1.0, rel=1e-12)
    torch.testing.assert_close(eig[:3], torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    set_flat_params(list(net.parameters()), theta)
    assert float(net.product().detach()) == pytest.approx(0.36)
    with pytest.raises(SharpdimError, match="one per factor"):
        net.set_parameters((1.0, 2.0))


def test_model_seeds_are_checked_whole_numbers():
    import numpy as np

    a, b = build_mlp(3, 2, width=4, seed=np.int64(5)), build_mlp(3, 2, width=4, seed=5.0)
    assert torch.equal(get_flat_params(list(a.parameters())), get_flat_params(list(b.parameters())))
    for bad in (1.5, -2, 2**32):  # 2**32 would build the model of seed 0
        with pytest.raises(SharpdimError, match=r"^seed must be"):
            build_mlp(3, 2, width=4, seed=bad)


def test_whole_float_transformer_sizes_build_the_int_model() -> None:
    """The sizes were checked but the raw floats built the model: torch.empty raised a
    TypeError, and num_heads=2.0 built a model whose every forward failed in view()."""
    import numpy as np

    sizes = {"seq_len": 3, "d_model": 8, "num_heads": 2, "num_layers": 1, "d_mlp": 16}
    ref = build_transformer(7, num_outputs=5, **sizes, seed=3)
    floats = {k: float(v) for k, v in sizes.items()}
    same = build_transformer(np.float64(7.0), num_outputs=5.0, **floats, seed=3)
    tokens = torch.tensor([[1, 2, 6], [0, 4, 6]])
    assert torch.equal(same(tokens), ref(tokens))
    assert torch.equal(
        get_flat_params(list(same.parameters())), get_flat_params(list(ref.parameters()))
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_mlp(3, 2, width=2.5), r"^width must be an integer >= 1, got 2.5"),
        (lambda: build_mlp(3, 2, depth="2"), r"^depth must be an integer >= 0, got '2'"),
        (lambda: build_mlp(None, 2), r"^in_dim must be an integer >= 1, got None"),
        (lambda: build_mlp(3, 2, dtype=torch.int64), r"^dtype must be a floating torch dtype"),
        (lambda: build_transformer(5, d_mlp=0), r"^d_mlp must be an integer >= 1, got 0"),
        (lambda: build_transformer(5, num_outputs=0), r"^num_outputs must be an integer >= 1"),
    ],
)
def test_bad_shapes_and_dtypes_are_one_line_errors(build, message) -> None:
    """Were TypeError / ZeroDivisionError tracebacks, or (num_outputs=0) accepted."""
    with pytest.raises(SharpdimError, match=message):
        build()


def test_float_tokens_are_refused_by_the_transformer() -> None:
    model = build_transformer(5, seq_len=3, d_model=8, num_heads=2, dtype=torch.float64)
    with pytest.raises(
        SharpdimError, match=r"integer tokens of shape \(n, T<=3\), got torch.float"
    ):
        model(torch.zeros(2, 3))


def test_the_token_check_leaves_vmap_per_example_gradients_working():
    """int(tokens.min()) on vmap's batched tensor raised 'data-dependent control flow'."""
    from torch.func import functional_call, grad, vmap

    model = build_transformer(8, seq_len=3, d_model=16, num_heads=2, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    tokens, labels = (
        torch.randint(0, 8, (5, 3), generator=g),
        torch.randint(0, 8, (5,), generator=g),
    )

    def loss(p, t, y):
        return nn.functional.cross_entropy(functional_call(model, p, (t[None],)), y[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, tokens, labels)
    for i in range(5):  # each equals the gradient of that example alone
        alone = grad(loss)(params, tokens[i], labels[i])
        torch.testing.assert_close(per_example["head.weight"][i], alone["head.weight"])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DeepScalarLinear(2.0), r"^init must be a list of numbers, got 2.0"),
        (lambda: DeepScalarLinear(("a",)), r"^each of init must be a finite number, got 'a'"),
        (lambda: DeepScalarLinear(()), r"^DeepScalarLinear needs at least one factor"),
        (
            lambda: DeepScalarLinear(dtype=torch.int64),
            r"^dtype must be a floating torch dtype, got torch.int64",
        ),
        (
            lambda: DeepScalarLinear().set_parameters(1.0),
            r"^values must be a list of numbers, got 1.0",
        ),
        (
            lambda: build_mlp(4, 2, generator=3),
            r"^generator must be a torch.Generator, got int: pass torch.Generator\(\)",
        ),
    ],
)
def test_bad_factors_dtypes_and_generators_are_one_line_errors(build, message) -> None:
    """Were TypeError (DeepScalarLinear(2.0), set_parameters(1.0), generator=3), ValueError
    (a factor 'a') and RuntimeError (an int64 parameter) tracebacks."""
    with pytest.raises(SharpdimError, match=message):
        build()


def test_empty_bool_and_uint8_tokens_are_refused_by_the_transformer() -> None:
    """T = 0 raised an IndexError (logits[:, -1]), bool and uint8 tokens the embedding's
    RuntimeError; int32 and int64 tokens give the same logits."""
    model = build_transformer(5, seq_len=3, d_model=8, num_heads=2, dtype=torch.float64)
    for tokens in (
        torch.zeros(2, 0, dtype=torch.int64),
        torch.zeros(2, 3, dtype=torch.bool),
        torch.zeros(2, 3, dtype=torch.uint8),
    ):
        shape = rf"\({tokens.shape[0]}, {tokens.shape[1]}\)"
        with pytest.raises(
            SharpdimError,
            match=rf"^transformer input must be integer tokens of shape \(n, T<=3\), got "
            rf"{tokens.dtype} {shape}: pass int64 \(or int32\) tokens with 1 <= T <= 3",
        ):
            model(tokens)
    tokens = torch.tensor([[1, 2, 4], [0, 3, 4]])
    assert torch.equal(model(tokens), model(tokens.int()))


def test_flags_given_as_strings_are_refused() -> None:
    """bias='no' and last_only='no' are truthy strings: they silently meant True."""
    with pytest.raises(SharpdimError, match=r"^bias must be True or False, got 'no'"):
        build_mlp(4, 2, bias="no")
    with pytest.raises(SharpdimError, match=r"^last_only must be True or False, got 'no'"):
        build_transformer(5, 3, last_only="no")
    assert all(m.bias is None for m in build_mlp(4, 2, bias=False) if isinstance(m, nn.Linear))


def test_a_list_for_an_activation_is_a_one_line_error():
    """build_mlp(..., activation=["tanh"]) raised 'unhashable type: list'."""
    with pytest.raises(SharpdimError, match=r"^unknown activation \['tanh'\]: use one of tanh"):
        build_mlp(3, 2, activation=["tanh"])  # type: ignore[arg-type]
