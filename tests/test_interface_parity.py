"""Parity with SSL_Interface, the paper's own interface code (github.com/atosystem/SSL_Interface).

Its two modules are re-derived here from their definition with torch.nn.functional, independently of
interfaces/: the weighted sum (``weighte_sum_weights`` [L], softmax over layers) and HConv (``transforms``, an
nn.Sequential of Conv1d(k, stride s, padding k // 2) + ReLU, floor(log L / log s) of them, D channels except
the last with D // L' channels, output ``view(B*T, -1)`` of [B*T, C, L'], i.e. channel-major), both after an
optional layer norm without affine over D. A state dict in SSL_Interface's key layout is loaded into our module;
outputs and gradients must agree. The paper's parameter counts quoted in the README and the configs are
checked against built modules.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interfaces import HierarchicalConv, WeightedSum, from_ssl_interface_config

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE, LARGE = (13, 768), (25, 1024)


# ------------------------------------------------------------------- SSL_Interface, from its definition


def ssl_interface_layer_counts(num_layers: int, kernel_size: int, stride: int) -> list[int]:
    """Layer counts through SSL_Interface's HConv: floor(log L / log s) convs (float logs, as it computes them),
    each L -> floor((L + 2 * (k // 2) - (k - 1) - 1) / s + 1)."""
    counts = [num_layers]
    for _ in range(math.floor(math.log(num_layers) / math.log(stride))):
        counts.append(math.floor((counts[-1] + 2 * (kernel_size // 2) - (kernel_size - 1) - 1) / stride + 1))
    return counts


def ssl_interface_hconv_state_dict(
    num_layers: int, hidden_size: int, kernel_size: int, stride: int, seed: int = 0
):
    """Random weights under SSL_Interface's keys: transforms.{2i}.weight [out, in, k] and .bias [out]."""
    generator = torch.Generator().manual_seed(seed)
    counts = ssl_interface_layer_counts(num_layers, kernel_size, stride)
    num_convs = len(counts) - 1
    state = {}
    for conv in range(num_convs):
        out_channels = hidden_size // counts[-1] if conv == num_convs - 1 else hidden_size
        scale = (hidden_size * kernel_size) ** -0.5
        weight = torch.randn(out_channels, hidden_size, kernel_size, generator=generator) * scale
        state[f"transforms.{2 * conv}.weight"] = weight
        state[f"transforms.{2 * conv}.bias"] = torch.randn(out_channels, generator=generator) * 0.1
    return state


def ssl_interface_hconv_forward(
    hidden: torch.Tensor, state: dict[str, torch.Tensor], stride: int, normalize: bool
):
    """SSL_Interface's HConv forward: [L, B, T, D] -> [B, T, C * L'] (channel-major flatten)."""
    num_layers, batch_size, num_frames, hidden_size = hidden.shape
    if normalize:
        hidden = F.layer_norm(hidden, (hidden_size,))
    x = hidden.permute(1, 2, 3, 0).reshape(batch_size * num_frames, hidden_size, num_layers)
    for conv in range(len(state) // 2):
        weight, bias = state[f"transforms.{2 * conv}.weight"], state[f"transforms.{2 * conv}.bias"]
        x = F.relu(F.conv1d(x, weight, bias, stride=stride, padding=weight.shape[-1] // 2))
    return x.reshape(batch_size * num_frames, -1).reshape(batch_size, num_frames, -1)


def ssl_interface_weighted_sum_forward(
    hidden: torch.Tensor, logits: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """SSL_Interface's (and s3prl's) weighted sum: sum_l softmax(w)_l * h_l, after the optional layer norm."""
    if normalize:
        hidden = F.layer_norm(hidden, hidden.shape[-1:])
    weights = F.softmax(logits, dim=-1)
    return (weights[:, None] * hidden.reshape(hidden.shape[0], -1)).sum(0).reshape(hidden.shape[1:])


def hidden_states(num_layers: int, hidden_size: int, batch_size: int = 2, num_frames: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    # An offset and per-feature scales, so that normalize changes the numbers.
    hidden = torch.randn(num_layers, batch_size, num_frames, hidden_size, generator=generator)
    return hidden * torch.linspace(0.5, 3.0, hidden_size) + 0.7


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------- outputs and gradients


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalize"])
@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize("size", [BASE, LARGE], ids=["13x768", "25x1024"])
def test_hconv_equals_ssl_interface_after_loading_its_state_dict(size, kernel_size, stride, normalize):
    num_layers, hidden_size = size
    counts = ssl_interface_layer_counts(num_layers, kernel_size, stride)
    their_state = ssl_interface_hconv_state_dict(num_layers, hidden_size, kernel_size, stride)
    output_dim = hidden_size // counts[-1] * counts[-1]
    # Built as a user of SSL_Interface would, from its config fields; built on the meta device and given the
    # SSL_Interface tensors (copies) by load_state_dict, which maps the keys.
    with torch.device("meta"):
        ours = from_ssl_interface_config(
            name="HierarchicalConvInterfaceConfig",
            upstream_layer_num=num_layers,
            upstream_feat_dim=hidden_size,
            normalize=normalize,
            conv_kernel_size=kernel_size,
            conv_kernel_stride=stride,
            output_dim=output_dim,
        )
    assert isinstance(ours, HierarchicalConv)
    assert ours.layer_counts == counts
    ours.load_state_dict({key: value.clone() for key, value in their_state.items()}, assign=True)
    assert trainable_count(ours) == sum(value.numel() for value in their_state.values())

    for tensor in their_state.values():
        tensor.requires_grad_(True)
    hidden = hidden_states(num_layers, hidden_size)
    hidden_theirs, hidden_ours = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    expected = ssl_interface_hconv_forward(hidden_theirs, their_state, stride, normalize)
    output = ours(hidden_ours)
    assert output.shape == expected.shape == (2, 3, output_dim)
    torch.testing.assert_close(output, expected)

    projection = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    (expected * projection).sum().backward()
    (output * projection).sum().backward()
    torch.testing.assert_close(hidden_ours.grad, hidden_theirs.grad)
    for conv in range(len(counts) - 1):
        for name in ("weight", "bias"):
            ours_grad = getattr(ours.convs[conv], name).grad
            torch.testing.assert_close(ours_grad, their_state[f"transforms.{2 * conv}.{name}"].grad)


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalize"])
@pytest.mark.parametrize("size", [BASE, LARGE], ids=["13x768", "25x1024"])
def test_weighted_sum_equals_ssl_interface_after_loading_its_state_dict(size, normalize):
    num_layers, hidden_size = size
    logits = torch.randn(num_layers, generator=torch.Generator().manual_seed(3))
    ours = from_ssl_interface_config(
        name="WeightedSumInterfaceConfig",
        upstream_layer_num=num_layers,
        upstream_feat_dim=hidden_size,
        normalize=normalize,
    )
    assert isinstance(ours, WeightedSum)
    ours.load_state_dict({"weighte_sum_weights": logits.clone()})
    logits.requires_grad_(True)
    hidden = hidden_states(num_layers, hidden_size)
    hidden_theirs, hidden_ours = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    expected = ssl_interface_weighted_sum_forward(hidden_theirs, logits, normalize)
    output = ours(hidden_ours, torch.tensor([3, 3]))
    torch.testing.assert_close(output, expected)
    projection = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    (expected * projection).sum().backward()
    (output * projection).sum().backward()
    torch.testing.assert_close(hidden_ours.grad, hidden_theirs.grad)
    torch.testing.assert_close(ours.weight_logits.grad, logits.grad)


def test_hconv_flattens_channel_major():
    # Output position c * L' + j holds channel c at remaining layer j of the last conv's [C, L'] output.
    torch.manual_seed(0)
    interface = HierarchicalConv(5, 8)  # 5 -> 2 layers, 4 channels
    hidden = torch.randn(5, 1, 1, 8)
    last = hidden[:, 0, 0].T.unsqueeze(0)  # [1, D, L]
    for conv in interface.convs:
        last = torch.relu(conv(last))
    assert last.shape == (1, 4, 2)
    output = interface(hidden)[0, 0]
    torch.testing.assert_close(output, last[0].reshape(-1))  # [c0 j0, c0 j1, c1 j0, ...]
    assert not torch.allclose(output, last[0].T.reshape(-1))  # not layer-major


# ------------------------------------------------------------------------------- loading SSL_Interface keys


def test_ssl_interface_keys_load_under_a_prefix_inside_a_larger_model():
    # L=9: 9 -> 3 -> 1 layers, two convolutions (transforms.0 and transforms.2 in SSL_Interface).
    state = {f"interface.{key}": value for key, value in ssl_interface_hconv_state_dict(9, 16, 5, 3).items()}
    state["head.weight"] = torch.ones(2, 16)
    model = nn.ModuleDict({"interface": HierarchicalConv(9, 16), "head": nn.Linear(16, 2, bias=False)})
    model.load_state_dict(state)
    torch.testing.assert_close(model["interface"].convs[1].bias, state["interface.transforms.2.bias"])
    torch.testing.assert_close(model["interface"].convs[0].weight, state["interface.transforms.0.weight"])
    assert set(model.state_dict()) == {
        "interface.convs.0.weight",
        "interface.convs.0.bias",
        "interface.convs.1.weight",
        "interface.convs.1.bias",
        "head.weight",
    }


def test_ssl_interface_key_map_is_documented_per_class():
    assert WeightedSum.ssl_interface_state_dict_keys == {"weighte_sum_weights": "weight_logits"}
    assert HierarchicalConv(25, 1024, kernel_size=3, stride=2).ssl_interface_key_map() == {
        f"transforms.{2 * k}.{name}": f"convs.{k}.{name}" for k in range(4) for name in ("weight", "bias")
    }


def test_a_partial_or_foreign_ssl_interface_state_dict_is_refused_naming_the_keys():
    interface = HierarchicalConv(9, 16)  # 2 convs
    extra = ssl_interface_hconv_state_dict(9, 16, 5, 3)
    extra["transforms.4.weight"] = torch.zeros(1)  # a third conv this module does not have
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"transforms\.4\.weight\""):
        interface.load_state_dict(extra)
    missing = ssl_interface_hconv_state_dict(9, 16, 5, 3)
    del missing["transforms.2.bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"convs\.1\.bias\""):
        interface.load_state_dict(missing)
    mixed = {**ssl_interface_hconv_state_dict(9, 16, 5, 3), "convs.0.weight": torch.zeros(16, 16, 5)}
    with pytest.raises(ValueError, match=r"both 'transforms\.0\.weight' .* and 'convs\.0\.weight'"):
        interface.load_state_dict(mixed)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight_logits"):
        WeightedSum(13, 768).load_state_dict({"weighte_sum_weights": torch.zeros(25)})


def test_layer_major_hconv_state_dicts_of_earlier_versions_are_refused():
    old = HierarchicalConv(5, 16).state_dict()
    old._metadata[""]["version"] = 1  # what the layer-major HConv (nn.Module's default version) saved
    with pytest.raises(ValueError, match=r"before its output was flattened channel-major .* Retrain"):
        HierarchicalConv(5, 16).load_state_dict(old)
    inside = nn.ModuleDict({"interface": HierarchicalConv(5, 16)}).state_dict()
    inside._metadata["interface"]["version"] = 1
    with pytest.raises(ValueError, match=r"interface\. was saved"):
        nn.ModuleDict({"interface": HierarchicalConv(5, 16)}).load_state_dict(inside)
    # SSL_Interface's own dicts are version 1 as well, but channel-major: they load.
    their_state = ssl_interface_hconv_state_dict(5, 16, 5, 3)
    their_state = type(old)(their_state)
    their_state._metadata = {"": {"version": 1}}
    HierarchicalConv(5, 16).load_state_dict(their_state)


def test_our_own_state_dicts_still_load():
    source = HierarchicalConv(5, 16)
    target = HierarchicalConv(5, 16)
    target.load_state_dict(source.state_dict())
    hidden = torch.randn(5, 2, 3, 16)
    torch.testing.assert_close(target(hidden), source(hidden))


# ------------------------------------------------------------------------------- compatibility entry point


def test_from_ssl_interface_config_takes_its_dataclass_fields_and_defaults():
    # A dataclass with SSL_Interface's field names and defaults, as its HierarchicalConvInterfaceConfig.
    from dataclasses import dataclass

    @dataclass
    class HierarchicalConvInterfaceConfig:
        name: str = "HierarchicalConvInterfaceConfig"
        upstream_layer_num: int = 13
        upstream_feat_dim: int = 768
        normalize: bool = False
        channel_change_strategy: str = "same_upstream"
        conv_kernel_size: int = 5
        conv_kernel_stride: int = 3
        output_dim: int | None = None

    hconv = from_ssl_interface_config(HierarchicalConvInterfaceConfig(output_dim=768, normalize=True))
    assert isinstance(hconv, HierarchicalConv)
    assert (hconv.num_layers, hconv.hidden_size, hconv.kernel_size, hconv.stride, hconv.padding) == (
        13,
        768,
        5,
        3,
        2,
    )
    assert hconv.normalize and hconv.output_size == 768 and trainable_count(hconv) == 4_424_832
    with pytest.raises(ValueError, match=r"output_dim=768 but .* 1023 features"):
        from_ssl_interface_config(
            HierarchicalConvInterfaceConfig(upstream_layer_num=25, upstream_feat_dim=1024, output_dim=768)
        )
    weighted = from_ssl_interface_config({"upstream_layer_num": 25, "upstream_feat_dim": 1024})
    assert isinstance(weighted, WeightedSum) and weighted.num_layers == 25 and not weighted.normalize
    single = from_ssl_interface_config(name="SingleLayerInterfaceConfig", selected_layer=4)
    assert single.layer == 4 and single.num_layers == 13


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        (
            {"name": "WeightedSumInterfaceConfig", "conv_kernel_size": 5},
            ["WeightedSumInterfaceConfig", "conv_kernel_size"],
        ),
        ({"name": "CLSInterfaceConfig"}, ["CLSInterfaceConfig", "HierarchicalConvInterfaceConfig"]),
        (
            {"conv_kernel_size": 5, "channel_change_strategy": "shrink"},
            ["channel_change_strategy", "same_upstream", "shrink"],
        ),
        ({"upstream_layer_num": 13, "layers": [1]}, ["layers", "upstream_layer_num"]),
    ],
)
def test_from_ssl_interface_config_rejects_what_ssl_interface_does_not_have(fields, fragments):
    with pytest.raises(ValueError) as caught:
        from_ssl_interface_config(fields)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.slow
def test_docs_snippet_builds_both_modules_without_hydra():
    readme = (REPO_ROOT / "docs" / "interfaces.md").read_text()
    snippet = re.search(r"<!-- ssl-interface-snippet -->\n```python\n(.*?)```", readme, re.S)
    assert snippet, "docs/interfaces.md lost its SSL_Interface snippet"
    code = snippet.group(1) + "\nimport sys\nassert 'hydra' not in sys.modules, 'interfaces imported Hydra'\n"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "torch.Size([8, 100, 768]) torch.Size([8, 100, 768])" in completed.stdout


# ------------------------------------------------------------------------- published parameter counts


def hconv_count(num_layers: int, hidden_size: int, **hyperparameters) -> int:
    with torch.device("meta"):
        return trainable_count(HierarchicalConv(num_layers, hidden_size, **hyperparameters))


def hconv_size_quotes(path: str) -> str:
    """The text that quotes HConv's sizes: the interfaces page's table row, or the config's header comment."""
    text = (REPO_ROOT / path).read_text()
    if path == "docs/interfaces.md":
        return next(line for line in text.splitlines() if line.startswith("| `hconv` |"))
    return text.split("_target_")[0]


@pytest.mark.parametrize(
    ("path", "output_phrase"),
    [("docs/interfaces.md", "output {}"), ("configs/interface/hconv.yaml", "{} features")],
)
def test_published_hconv_figures_are_the_built_modules(path, output_phrase):
    # Every comma-grouped figure quoted must be a built module's parameter count, and both sizes quoted.
    # (configs/experiment/table3.yaml: tests/test_sweeps.py::test_table3_widens_the_head_by_hconvs_parameter_count.)
    quotes = hconv_size_quotes(path)
    built = {f"{hconv_count(*BASE):,}", f"{hconv_count(*LARGE):,}"}
    assert built == {"4,424,832", "6,990,165"}
    assert set(re.findall(r"\d{1,3}(?:,\d{3})+", quotes)) == built, quotes
    with torch.device("meta"):
        for size in (BASE, LARGE):
            assert output_phrase.format(HierarchicalConv(*size).output_size) in quotes
