"""Interfaces: every config file, the paper's sizes, the padding rule, gradients, autocast, and each
interface's math checked against an independent computation on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from interfaces import (
    CLSPooling,
    ConcatProjection,
    GroupedWeightedSum,
    HierarchicalConv,
    Interface,
    LayerAttention,
    NotFittedError,
    PCAConcat,
    SingleLayer,
    WeightedSum,
)
from interfaces.configs import build_interface, compose_interface_config, interface_config_names

INTERFACE_NAMES = interface_config_names()
EXPECTED_NAMES = {
    "last_layer",
    "single_layer",
    "weighted_sum",
    "group_ws",
    "concat_proj",
    "pca_concat",
    "hconv",
    "cls_pooling",
    "layer_attention",
}
# Small sizes for behaviour tests: hconv goes 5 -> 2 layers x 8 channels, pca_concat keeps 3 per layer.
SMALL_L, SMALL_D = 5, 16


def build(name: str, num_layers: int = SMALL_L, hidden_size: int = SMALL_D, overrides=None) -> Interface:
    return build_interface(name, num_layers, hidden_size, overrides)


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def random_batch(num_layers=SMALL_L, hidden_size=SMALL_D, lengths=(9, 6, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    hidden = torch.randn(num_layers, len(lengths), int(lengths.max()), hidden_size, generator=generator)
    return hidden, lengths


def ready(interface: Interface, seed: int = 1) -> Interface:
    """Fit interfaces that need it on random features; eval mode so dropout is off."""
    if interface.needs_fit:
        interface.fit(
            [random_batch(interface.num_layers, interface.hidden_size, lengths=(40, 30), seed=seed)]
        )
    return interface.eval()


# ---------------------------------------------------------------------------------------------- configs


def test_config_set_holds_the_issue_table():
    assert set(INTERFACE_NAMES) >= EXPECTED_NAMES  # an added interface needs no edit here


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_every_config_composes_and_instantiates(name):
    cfg = compose_interface_config(name)
    keys = set(OmegaConf.to_container(cfg))
    assert cfg._target_.startswith("interfaces.")
    assert not keys & {"num_layers", "hidden_size", "name"}
    interface = instantiate(cfg, num_layers=13, hidden_size=768)
    assert isinstance(interface, Interface)
    assert isinstance(interface.output_size, int) and interface.output_size > 0
    assert "num_layers=13" in repr(interface) and "hidden_size=768" in repr(interface)


EXPECTED_OUTPUT_SIZE = {  # L=13, D=768 at the config defaults
    "last_layer": 768,
    "single_layer": 768,
    "weighted_sum": 768,
    "group_ws": 768,
    "concat_proj": 768,
    "pca_concat": 13 * (768 // 13),
    "hconv": 2 * 384,
    "cls_pooling": 768,
    "layer_attention": 768,
}


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_output_size_at_base_size(name):
    assert build(name, 13, 768).output_size == EXPECTED_OUTPUT_SIZE[name]


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_forward_shape_matches_output_size(name):
    interface = ready(build(name))
    hidden, lengths = random_batch()
    output = interface(hidden, lengths)
    assert output.shape == (3, 9, interface.output_size)
    assert output.dtype == torch.float32


# ------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("last_layer", [], 0),
        ("single_layer", [], 0),
        ("weighted_sum", [], 13),
        ("weighted_sum", ["interface.layers=[0,6,12]"], 3),
        ("concat_proj", [], 7_669_248),
        ("concat_proj", ["interface.output_norm=false"], 13 * 768 * 768 + 768),
        ("pca_concat", [], 0),
        ("hconv", [], 4_424_832),
        ("cls_pooling", [], 5_513_984 + 768),
        ("cls_pooling", ["interface.layer_embedding=true"], 5_513_984 + 768 + 14 * 768),
        ("layer_attention", [], 768 * 64 + 64 + 64 + 13),
    ],
)
def test_exact_parameter_counts(name, overrides, expected):
    assert trainable_count(build(name, 13, 768, overrides)) == expected


@pytest.mark.parametrize(
    ("name", "overrides", "about"),
    [
        ("group_ws", ["interface.num_groups=2"], 1.18e6),
        ("group_ws", ["interface.num_groups=3"], 1.77e6),
        ("group_ws", ["interface.num_groups=4"], 2.36e6),
        ("cls_pooling", [], 5.51e6),
    ],
)
def test_approximate_parameter_counts(name, overrides, about):
    assert trainable_count(build(name, 13, 768, overrides)) == pytest.approx(about, rel=0.01)


def test_hconv_large_model_size():
    interface = build("hconv", 25, 1024)
    assert interface.layer_counts == [25, 9, 3]
    assert interface.output_size == 1023
    assert trainable_count(interface) == (1024 * 1024 * 5 + 1024) + (1024 * 341 * 5 + 341) == 6_990_165


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "layer_counts", "params"),
    [
        # The issue's example: padding follows the kernel (3 // 2 = 1), not a fixed 2.
        (3, 2, None, [13, 7, 4, 2], 2 * (768 * 768 * 3 + 768) + 768 * 384 * 3 + 384),
        (7, 3, None, [13, 5, 2], (768 * 768 * 7 + 768) + (768 * 384 * 7 + 384)),
        (3, 2, 2, [13, 8, 5, 4], 2 * (768 * 768 * 3 + 768) + 768 * 192 * 3 + 192),  # explicit padding wins
    ],
)
def test_hconv_padding_defaults_to_half_the_kernel(kernel_size, stride, padding, layer_counts, params):
    overrides = [f"interface.kernel_size={kernel_size}", f"interface.stride={stride}"]
    if padding is not None:
        overrides.append(f"interface.padding={padding}")
    interface = build("hconv", 13, 768, overrides)
    assert interface.padding == (kernel_size // 2 if padding is None else padding)
    assert interface.layer_counts == layer_counts
    assert trainable_count(interface) == params
    assert [conv.padding for conv in interface.convs] == [(interface.padding,)] * len(interface.convs)


def test_hconv_kernel3_stride2_is_the_issue_figure():
    assert trainable_count(HierarchicalConv(13, 768, kernel_size=3, stride=2)) == 4_425_600


def test_hconv_output_dim_is_checked_against_the_architecture():
    assert HierarchicalConv(13, 768, output_dim=768).output_size == 768
    assert HierarchicalConv(25, 1024, output_dim=1023).output_size == 1023
    with pytest.raises(ValueError, match=r"output_dim=1024 but .* = 1023 features"):
        HierarchicalConv(25, 1024, output_dim=1024)


# ------------------------------------------------------------------------------ the contract, all configs


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_padding_never_leaks_into_valid_frames(name):
    torch.manual_seed(0)
    interface = ready(build(name))
    hidden, lengths = random_batch()
    # Same valid frames; different values at every padded frame, and 4 more padded frames at the end.
    noisy = torch.randn(SMALL_L, 3, 13, SMALL_D) * 50
    valid = (torch.arange(9)[None, :] < lengths[:, None])[None, :, :, None]
    noisy[:, :, :9] = torch.where(valid, hidden, noisy[:, :, :9])
    with torch.no_grad():
        plain, padded = interface(hidden, lengths), interface(noisy, lengths)
    for b, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(padded[b, :length], plain[b, :length], atol=1e-5, rtol=1e-5)
        assert torch.all(padded[b, length:] == 0) and torch.all(plain[b, length:] == 0)


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_normalize_is_layer_norm_of_the_input_for_every_interface(name):
    # Same weights; normalize=true on raw hidden states must equal normalize=false on hidden states
    # layer-normed by hand (no affine, eps 1e-5, per layer and frame over D), fit included.
    torch.manual_seed(0)
    normalized = build(name, overrides=["interface.normalize=true"])
    plain = build(name, overrides=["interface.normalize=false"])
    plain.load_state_dict(normalized.state_dict())
    assert normalized.normalize and not plain.normalize
    hidden, lengths = random_batch()
    hidden = hidden * torch.linspace(0.5, 9.0, SMALL_D) + 4.0  # far from normalised already
    mean = hidden.mean(-1, keepdim=True)
    by_hand = (hidden - mean) / torch.sqrt(((hidden - mean) ** 2).mean(-1, keepdim=True) + 1e-5)
    if normalized.needs_fit:
        fit_hidden, fit_lengths = random_batch(lengths=(40, 30), seed=1)
        fit_hidden = fit_hidden * torch.linspace(0.5, 9.0, SMALL_D) + 4.0
        fit_mean = fit_hidden.mean(-1, keepdim=True)
        fit_by_hand = (fit_hidden - fit_mean) / torch.sqrt(
            ((fit_hidden - fit_mean) ** 2).mean(-1, keepdim=True) + 1e-5
        )
        normalized.fit([(fit_hidden, fit_lengths)])
        plain.fit([(fit_by_hand, fit_lengths)])
    normalized.eval(), plain.eval()
    with torch.no_grad():
        expected = plain(by_hand, lengths)
        torch.testing.assert_close(normalized(hidden, lengths), expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(plain(hidden, lengths), expected, atol=1e-2)  # normalize changed something


def test_lengths_default_to_every_frame_valid():
    interface = build("hconv")
    hidden, _ = random_batch(lengths=(9, 9, 9))
    torch.testing.assert_close(interface(hidden), interface(hidden, torch.tensor([9, 9, 9])))


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    torch.manual_seed(0)
    interface = build(name)
    if interface.needs_fit:
        ready(interface).train()
    hidden, lengths = random_batch()
    hidden.requires_grad_(True)
    output = interface(hidden, lengths)
    # A random projection: a plain sum would give LayerNorm'd outputs a zero gradient.
    (output * torch.randn_like(output)).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    for param_name, param in interface.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, (
            f"{name}: zero grad {param_name}"
        )


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_bf16_autocast_forward_is_finite(name):
    interface = ready(build(name))
    hidden, lengths = random_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = interface(hidden, lengths)
    assert output.shape == (3, 9, interface.output_size)
    assert torch.isfinite(output).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA")
@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_fp16_autocast_forward_backward_on_cuda(name):
    interface = ready(build(name)).cuda().train()
    hidden, lengths = random_batch()
    hidden, lengths = hidden.cuda().requires_grad_(True), lengths.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        output = interface(hidden, lengths)
    assert torch.isfinite(output).all()
    output.float().square().mean().backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_layer_weights_are_normalised_or_absent(name):
    interface = ready(build(name))
    interface(*random_batch())
    weights = interface.layer_weights()
    weighs_layers = name not in {"concat_proj", "pca_concat", "hconv", "cls_pooling"}
    assert type(interface).weighs_layers is weighs_layers
    if not weighs_layers:
        assert weights is None
        return
    assert weights.shape[-1] == SMALL_L and weights.dim() in (1, 2)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_wrong_input_shape_is_a_clear_error():
    interface = build("weighted_sum")
    hidden, lengths = random_batch(num_layers=SMALL_L + 1)
    with pytest.raises(ValueError, match=r"built for L=5, D=16, got hidden_states with L=6"):
        interface(hidden, lengths)
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        interface(random_batch()[0], torch.tensor([3, 3]))


# ----------------------------------------------------------------------------------- bad hyperparameters


@pytest.mark.parametrize(
    ("name", "num_layers", "hidden_size", "overrides", "fragments"),
    [
        ("hconv", 2, 768, [], ["num_layers", "2", ">= 3"]),
        ("hconv", 13, 768, ["interface.stride=1"], ["stride", "1", ">= 2"]),
        ("hconv", 13, 768, ["interface.output_dim=767"], ["output_dim=767", "768 features"]),
        ("weighted_sum", 13, 768, ["interface.normalize=1"], ["normalize", "true or false", "1"]),
        ("hconv", 13, 768, ["interface.normalize=yes"], ["normalize", "true or false", "yes"]),
        ("single_layer", 13, 768, ["interface.layer=13"], ["layer", "13", "[-13, 12]"]),
        ("single_layer", 13, 768, ["interface.layer=-14"], ["layer", "-14", "[-13, 12]"]),
        ("weighted_sum", 13, 768, ["interface.layers=[0,13]"], ["layers", "13", "[-13, 12]"]),
        ("weighted_sum", 13, 768, ["interface.layers=[1,-12]"], ["layers", "repeat", "[1, -12]"]),
        ("weighted_sum", 13, 768, ["interface.layers=[]"], ["layers", "[]", "[0, 12]"]),
        ("group_ws", 13, 768, ["interface.num_groups=14"], ["num_groups", "14", "[1, 13]"]),
        ("group_ws", 13, 768, ["interface.num_groups=0"], ["num_groups", "0", "[1, 13]"]),
        ("group_ws", 13, 768, ["interface.output_dim=0"], ["output_dim", "0", ">= 1"]),
        ("concat_proj", 13, 768, ["interface.output_dim=-5"], ["output_dim", "-5", ">= 1"]),
        ("pca_concat", 13, 768, ["interface.output_dim=0"], ["output_dim", "0", ">= 1"]),
        ("pca_concat", 13, 768, ["interface.output_dim=12"], ["output_dim", "12", "[13, 9984]"]),
        ("pca_concat", 13, 768, ["interface.max_fit_frames=10"], ["max_fit_frames", "10", ">= 60"]),
        ("cls_pooling", 13, 768, ["interface.nhead=7"], ["nhead", "7", "divisor of 768"]),
        ("cls_pooling", 13, 768, ["interface.num_tf_layers=0"], ["num_tf_layers", "0", ">= 1"]),
        ("layer_attention", 13, 768, ["interface.scorer_dim=0"], ["scorer_dim", "0", ">= 1"]),
    ],
)
def test_bad_hyperparameters_fail_at_construction(name, num_layers, hidden_size, overrides, fragments):
    # _partial_ defers the call, so the ValueError itself surfaces rather than Hydra's wrapper around it.
    constructor = instantiate(compose_interface_config(name, overrides), _partial_=True)
    with pytest.raises(ValueError) as caught:
        constructor(num_layers=num_layers, hidden_size=hidden_size)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_hydra_reports_the_bad_hyperparameter():
    with pytest.raises(InstantiationException, match=r"num_groups must be in \[1, 13\], got 14"):
        build("group_ws", 13, 768, ["interface.num_groups=14"])


# ------------------------------------------------------------------- each interface's math, independently


def test_single_layer_picks_the_layer():
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    torch.testing.assert_close(
        build("single_layer", overrides=["interface.layer=1"])(hidden, lengths), hidden[1]
    )
    torch.testing.assert_close(
        build("single_layer", overrides=["interface.layer=-2"])(hidden, lengths), hidden[3]
    )
    torch.testing.assert_close(build("last_layer")(hidden, lengths), hidden[-1])
    assert build("single_layer", overrides=["interface.layer=1"]).layer_weights().tolist() == [0, 1, 0, 0, 0]


def test_weighted_sum_starts_as_the_mean_of_layers():
    interface = build("weighted_sum")
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    torch.testing.assert_close(interface.layer_weights(), torch.full((SMALL_L,), 1 / SMALL_L))
    torch.testing.assert_close(interface(hidden, lengths), hidden.mean(0))


def test_weighted_sum_uses_softmax_of_its_logits():
    interface = build("weighted_sum")
    with torch.no_grad():
        interface.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    exp = np.exp([0.5, -1.0, 2.0, 0.0, 1.0])
    expected = sum(float(w) * hidden[layer] for layer, w in enumerate(exp / exp.sum()))
    torch.testing.assert_close(interface(hidden, lengths), expected)


def test_weighted_sum_layer_subset():
    interface = build("weighted_sum", overrides=["interface.layers=[0,-1]"])
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    assert trainable_count(interface) == 2
    torch.testing.assert_close(interface(hidden, lengths), (hidden[0] + hidden[4]) / 2)
    torch.testing.assert_close(interface.layer_weights(), torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5]))


def test_weighted_sum_normalize_is_layer_norm_without_affine():
    interface = build("weighted_sum", overrides=["interface.normalize=true"])
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    hidden = hidden * 7 + 3
    mean = hidden.mean(-1, keepdim=True)
    variance = ((hidden - mean) ** 2).mean(-1, keepdim=True)
    expected = ((hidden - mean) / torch.sqrt(variance + 1e-5)).mean(0)
    torch.testing.assert_close(interface(hidden, lengths), expected)


def reference_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def test_group_ws_matches_per_group_softmax_concat_and_projection():
    torch.manual_seed(0)
    interface = build("group_ws", overrides=["interface.num_groups=2", "interface.output_dim=6"])
    logits = torch.tensor([0.3, -0.2, 1.0, 0.5, -1.0])
    with torch.no_grad():
        interface.weight_logits.copy_(logits)
        interface.projection.norm.weight.uniform_(0.5, 1.5)
        interface.projection.norm.bias.uniform_(-1, 1)
    assert [(g.start, g.stop) for g in interface.groups] == [(0, 3), (3, 5)]
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    sums = [
        sum(w * hidden[layer] for w, layer in zip(torch.softmax(logits[group], 0), group, strict=True))
        for group in (range(0, 3), range(3, 5))
    ]
    projected = torch.cat(sums, -1) @ interface.projection.linear.weight.T
    expected = reference_layer_norm(projected, interface.projection.norm)
    torch.testing.assert_close(interface(hidden, lengths), expected, atol=1e-5, rtol=1e-5)
    weights = interface.layer_weights()
    assert weights.shape == (2, SMALL_L)
    assert torch.all(weights[0, 3:] == 0) and torch.all(weights[1, :3] == 0)


def test_group_ws_splits_layers_contiguously():
    interface = build("group_ws", 13, 768, ["interface.num_groups=3"])
    assert [(g.start, g.stop) for g in interface.groups] == [(0, 5), (5, 9), (9, 13)]
    assert [len(g) for g in build("group_ws", 13, 768, ["interface.num_groups=4"]).groups] == [4, 3, 3, 3]


@pytest.mark.parametrize("output_norm", [True, False])
def test_concat_proj_matches_concatenation_and_projection(output_norm):
    torch.manual_seed(0)
    interface = build("concat_proj", overrides=[f"interface.output_norm={str(output_norm).lower()}"])
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    concatenated = torch.cat(list(hidden), dim=-1)  # [B, T, L*D], layer-major
    projected = concatenated @ interface.projection.linear.weight.T
    if output_norm:
        expected = reference_layer_norm(projected, interface.projection.norm)
    else:
        expected = projected + interface.projection.linear.bias
    torch.testing.assert_close(interface(hidden, lengths), expected, atol=1e-5, rtol=1e-5)


def reference_relu_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int):
    """One frame: x [C_in, length] -> ReLU(conv) [C_out, length_out], written as explicit window sums."""
    kernel = weight.shape[2]
    padded = np.pad(x, ((0, 0), (padding, padding)))
    length_out = (padded.shape[1] - kernel) // stride + 1
    out = np.stack(
        [
            np.einsum("oik,ik->o", weight, padded[:, j * stride : j * stride + kernel])
            for j in range(length_out)
        ],
        axis=1,
    )
    return np.maximum(out + bias[:, None], 0.0)


@pytest.mark.parametrize(("num_layers", "layer_counts"), [(5, [5, 2]), (9, [9, 3, 1])])
def test_hconv_matches_explicit_layer_axis_convolutions(num_layers, layer_counts):
    torch.manual_seed(0)
    interface = build("hconv", num_layers=num_layers)
    assert interface.layer_counts == layer_counts
    assert interface.output_size == layer_counts[-1] * (SMALL_D // layer_counts[-1])
    hidden, lengths = random_batch(num_layers=num_layers, lengths=(4, 4))
    output = interface(hidden, lengths).detach().numpy()
    for b in range(2):
        for t in range(4):
            features = hidden[:, b, t].numpy().T  # [D, L]: channels x layers
            for conv in interface.convs:
                w, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
                features = reference_relu_conv(features, w, bias, stride=3, padding=2)
            # Channel-major: the remaining layers of channel 0, then of channel 1, ...
            np.testing.assert_allclose(output[b, t], features.reshape(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_tf_layers", [1, 2])
def test_cls_pooling_equals_the_full_encoder_at_the_cls_position(num_tf_layers):
    torch.manual_seed(0)
    interface = build("cls_pooling", overrides=[f"interface.num_tf_layers={num_tf_layers}"]).eval()
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    tokens = torch.cat(
        [interface.cls_token.expand(27, 1, SMALL_D), hidden.permute(1, 2, 0, 3).reshape(27, 5, 16)], 1
    )
    for layer in interface.encoder_layers:
        tokens = layer(tokens)  # every position, as nn.TransformerEncoderLayer computes it
    with torch.no_grad():
        torch.testing.assert_close(interface(hidden, lengths), tokens[:, 0].reshape(3, 9, SMALL_D))


def test_cls_pooling_layer_embedding_breaks_layer_order_symmetry():
    torch.manual_seed(0)
    hidden, lengths = random_batch(lengths=(9, 9, 9))
    reversed_hidden = hidden.flip(0)
    plain = build("cls_pooling").eval()
    with torch.no_grad():  # without positions the encoder cannot tell the layers' order
        torch.testing.assert_close(
            plain(hidden, lengths), plain(reversed_hidden, lengths), atol=1e-5, rtol=1e-5
        )
        positional = build("cls_pooling", overrides=["interface.layer_embedding=true"]).eval()
        positional.position_embedding.normal_()
        assert not torch.allclose(
            positional(hidden, lengths), positional(reversed_hidden, lengths), atol=1e-3
        )


def test_layer_attention_weights_per_frame():
    torch.manual_seed(0)
    interface = build("layer_attention")
    with torch.no_grad():
        interface.scorer_out.weight.normal_()
        interface.layer_bias.normal_()
    hidden, lengths = random_batch()
    scores = torch.tanh(hidden @ interface.scorer_hidden.weight.T + interface.scorer_hidden.bias)
    scores = (scores @ interface.scorer_out.weight.T).squeeze(-1) + interface.layer_bias[:, None, None]
    weights = torch.exp(scores) / torch.exp(scores).sum(0)  # [L, B, T]
    expected = (weights[..., None] * hidden).sum(0)
    valid = torch.arange(9)[None, :] < lengths[:, None]
    expected[~valid] = 0
    with torch.no_grad():
        torch.testing.assert_close(interface(hidden, lengths), expected, atol=1e-5, rtol=1e-5)
    assert weights[:, 0, 0].sub(weights[:, 0, 1]).abs().max() > 1e-3  # frames draw on layers differently
    mean_over_valid = weights.permute(1, 2, 0)[valid].mean(0)
    torch.testing.assert_close(interface.layer_weights(), mean_over_valid.detach())


# ------------------------------------------------------------------------------------------- pca_concat


def numpy_pca(frames: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frames [N, D] -> mean [D], top-k directions [D, k], their variances [k], by SVD of the centred data."""
    mean = frames.mean(0)
    _, singular_values, vt = np.linalg.svd(frames - mean, full_matrices=False)
    return mean, vt[:k].T, singular_values[:k] ** 2 / (len(frames) - 1)


def low_rank_batches(seed=0, sizes=((30, 22, 9), (40, 17), (25,)), pad_value=1e4):
    """Batches of features with a clear spectrum (distinct variances) and garbage in the padded frames."""
    generator = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, SMALL_D)
    batches, valid_frames = [], []
    for lengths in sizes:
        max_len = max(lengths)
        hidden = np.full((SMALL_L, len(lengths), max_len, SMALL_D), pad_value, dtype=np.float32)
        for b, length in enumerate(lengths):
            values = generator.standard_normal(
                (SMALL_L, length, SMALL_D)
            ) * scales + generator.standard_normal(SMALL_D)
            hidden[:, b, :length] = values
            valid_frames.append(values)
        batches.append((torch.from_numpy(hidden), torch.tensor(lengths)))
    return batches, np.concatenate(valid_frames, axis=1)  # [L, N, D]


def test_pca_concat_matches_numpy_pca_on_the_valid_frames_of_all_batches():
    interface = build("pca_concat")
    k = interface.components_per_layer
    assert k == SMALL_D // SMALL_L and interface.output_size == SMALL_L * k
    batches, frames = low_rank_batches()
    interface.fit(batches)
    for layer in range(SMALL_L):
        mean, directions, variances = numpy_pca(frames[layer].astype(np.float64), k)
        np.testing.assert_allclose(interface.mean[layer].numpy(), mean, atol=1e-4)
        np.testing.assert_allclose(interface.explained_variance[layer].numpy(), variances, rtol=1e-4)
        signs = np.sign(np.sum(directions * interface.components[layer].numpy(), axis=0))
        np.testing.assert_allclose(interface.components[layer].numpy(), directions * signs, atol=1e-4)
    hidden, lengths = batches[0]
    output = interface(hidden, lengths)
    expected = [
        (frames[layer, :30] - frames[layer].mean(0)) @ interface.components[layer].numpy()
        for layer in range(SMALL_L)
    ]
    np.testing.assert_allclose(output[0, :30].numpy(), np.concatenate(expected, axis=1), atol=1e-3)


def test_pca_concat_fit_ignores_padded_frames():
    padded_with_garbage = build("pca_concat")
    padded_with_zeros = build("pca_concat")
    padded_with_garbage.fit(low_rank_batches(pad_value=1e4)[0])
    padded_with_zeros.fit(low_rank_batches(pad_value=0.0)[0])
    for name, buffer in padded_with_garbage.state_dict().items():
        torch.testing.assert_close(buffer, padded_with_zeros.state_dict()[name], msg=name)


def test_pca_concat_stops_reading_at_max_fit_frames():
    interface = build("pca_concat", overrides=["interface.max_fit_frames=50"])
    batches, frames = low_rank_batches()

    def stream():
        yield from batches[:1]  # 61 valid frames: the budget of 50 is reached inside this batch
        raise AssertionError("fit read past max_fit_frames")

    interface.fit(stream())
    mean, _, variances = numpy_pca(frames[0, :50].astype(np.float64), interface.components_per_layer)
    np.testing.assert_allclose(interface.mean[0].numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(interface.explained_variance[0].numpy(), variances, rtol=1e-4)


def test_pca_concat_must_be_fitted_and_round_trips_through_the_state_dict():
    hidden, lengths = random_batch()
    unfitted = build("pca_concat")
    assert unfitted.needs_fit and not unfitted.is_fitted
    with pytest.raises(NotFittedError, match="fit"):
        unfitted(hidden, lengths)
    with pytest.raises(ValueError, match="saw 2 valid frames"):
        unfitted.fit([random_batch(lengths=(2,))])

    fitted = build("pca_concat")
    fitted.fit(low_rank_batches()[0])
    assert trainable_count(fitted) == 0
    assert {"mean", "components", "explained_variance", "fitted"} <= set(fitted.state_dict())
    restored = nn.ModuleDict({"interface": build("pca_concat")})  # loaded as part of a larger model
    restored.load_state_dict(nn.ModuleDict({"interface": fitted}).state_dict())
    assert restored["interface"].is_fitted
    torch.testing.assert_close(restored["interface"](hidden, lengths), fitted(hidden, lengths))


# ------------------------------------------------------------------------------------- direct construction


def test_classes_build_without_hydra():
    assert SingleLayer(13, 768, layer=3).layer == 3
    assert WeightedSum(13, 768).output_size == 768
    assert GroupedWeightedSum(13, 768, num_groups=3, output_dim=256).output_size == 256
    assert ConcatProjection(13, 768, output_dim=128).output_size == 128
    assert PCAConcat(13, 768, output_dim=130).output_size == 130
    assert HierarchicalConv(13, 768).output_size == 768
    assert HierarchicalConv(13, 768, kernel_size=5, stride=3, output_dim=768, normalize=True).normalize
    assert CLSPooling(13, 768).output_size == 768
    assert LayerAttention(13, 768).output_size == 768
