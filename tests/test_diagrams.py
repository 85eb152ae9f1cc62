"""The diagrams are drawn from the objects they show: boxes, labels and counts checked."""
import re

import pytest

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import minixception as mx  # noqa: E402
from minixception import diagrams as D  # noqa: E402
from minixception import nn  # noqa: E402
from minixception.models import inception  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_figure1_towers_come_from_the_module():
    labels = D.box_labels(D.inception_figure(1))
    towers = sorted({k.split("/")[0] for k in labels if k.startswith("tower")})
    assert towers == ["tower1", "tower2", "tower3", "tower4"]
    assert [labels[f"tower2/{i}"] for i in (1, 2)] == ["1x1 conv, 48", "5x5 conv, 64"]
    assert [labels[f"tower3/{i}"] for i in (1, 2, 3)] == ["1x1 conv, 64", "3x3 conv, 96", "3x3 conv, 96"]
    assert [labels[f"tower4/{i}"] for i in (1, 2)] == ["3x3 avg pool", "1x1 conv, 32"]
    # another module, another picture: the labels follow the object
    other = D.box_labels(D.inception_figure(1, module=inception.InceptionV3Module(8, pool_features=64, rng=0)))
    assert other["tower4/2"] == "1x1 conv, 64"
    assert labels["input"] == "Input" and labels["concat"] == "Concat"


@pytest.mark.parametrize("figure, n_1x1, n_3x3", [(2, 3, 3), (3, 1, 3), (4, 1, 8)])
def test_figures_2_to_4_have_the_papers_boxes(figure, n_1x1, n_3x3):
    labels = D.box_labels(D.inception_figure(figure))
    assert sum(v.startswith("1x1") for v in labels.values()) == n_1x1
    assert sum(v.startswith("3x3") for v in labels.values()) == n_3x3
    assert not any("pool" in v for v in labels.values())            # no pooling tower from Figure 2 on


def test_figure3_draws_one_3x3_per_segment():
    assert sum(k.startswith("3x3/") for k in D.box_labels(D.inception_figure(3, segments=5))) == 5
    with pytest.raises(ValueError, match="Figures 1-4"):
        D.inception_figure(5)
    with pytest.raises(ValueError, match="segments must be a positive int"):
        D.inception_figure(3, segments=0)


def _drawn_names(model, flow_items):
    names = []
    for kind, m in flow_items:
        main = m.main if isinstance(m, nn.Residual) else m
        mods = list(main.modules()) if main._children else [main]
        names += [l.name for l in mods if not l._children and not isinstance(l, nn.BatchNorm2D)]
    return names


def test_figure5_boxes_are_the_models_layers():
    model = mx.models.Xception(rng=0)
    fig = D.xception_figure(model)
    labels = D.box_labels(fig)
    flows = D.xception_flows(model)
    assert [len(flows[k]) for k in ("entry", "middle", "exit")] == [6 + 3, 8, 1 + 6 + 2]   # stem layers + 3 modules; 8; block13 + block14 + head
    want = _drawn_names(model, flows["entry"]) + _drawn_names(model, flows["middle"][:1]) + _drawn_names(model, flows["exit"])
    assert set(want) <= set(labels)
    assert labels["block1_conv1"] == "Conv 32, 3x3, stride 2x2"
    assert labels["block4_sepconv2"] == "SeparableConv 728, 3x3"
    assert labels["block14_sepconv2"] == "SeparableConv 2048, 3x3"
    assert labels["predictions"] == "Fully connected, 1000"
    assert "block6_sepconv1" not in labels                           # the repeated middle modules are drawn once
    assert labels["block13_shortcut:shortcut"] == "Conv 1024, 1x1, stride 2x2"
    assert "block13_shortcut" not in labels                          # beside the main path, not in it
    shortcuts = [k for k in labels if k.endswith(":shortcut")]
    assert len(shortcuts) == 5                                       # blocks 2, 3, 4, 13 and the middle module's identity
    assert "repeated 8 times" in fig.axes[1].get_title()
    # the picture follows the object: a different model, a different figure
    small = mx.models.mini_xception(middle_blocks=3, intermediate="relu", residual=False, rng=0)
    fig2 = D.xception_figure(small)
    labels2 = D.box_labels(fig2)
    assert "repeated 3 times" in fig2.axes[1].get_title()
    assert not [k for k in labels2 if k.endswith(":shortcut")]       # no residual connections drawn
    assert labels2["block2_sepconv1"] == "SeparableConv 32, 3x3 (relu inside)"


def test_figure5_refuses_a_single_layer():
    with pytest.raises(TypeError, match="Xception-shaped model"):
        D.xception_figure(nn.ReLU())


def test_separable_figure_counts():
    costs = D.separable_costs(19, 19, 728, 728)
    assert costs == {"depthwise": 19 * 19 * 9 * 728, "pointwise": 19 * 19 * 728 * 728, "regular": 19 * 19 * 9 * 728 * 728}
    labels = D.box_labels(D.separable_figure(19, 19, 728, 728))
    assert labels["x"].endswith("19x19x728") and labels["y"].endswith("19x19x728")
    assert "3x3x728x1" in labels["depthwise_kernel"] and "1x1x728x728" in labels["pointwise_kernel"]
    assert f"{costs['depthwise']:,}" in labels["depthwise_cost"]
    assert f"{costs['pointwise']:,}" in labels["pointwise_cost"]
    with pytest.raises(ValueError, match="c must be a positive int"):
        D.separable_costs(4, 4, 0, 3)


def test_source_view_marks_the_line_that_computes():
    def f(x, w):
        """doc: x @ w is not code here"""
        y = x * 2
        z = y @ w          # the product
        return z
    view = D.SourceView(f, {r"@": "Y = X W", r"nothing_like_this": "absent"})
    line = view.lines[view.marked["Y = X W"] - 1]
    assert line.strip().startswith("z = y @ w") and line.endswith("# <-- Y = X W")
    assert view.missing() == ["absent"] and "absent" in view.markdown()
    assert view.markdown().count("```") == 2
    real = D.SourceView(mx.functional.conv2d_forward, {r"def conv2d_forward": "never: def lines are skipped"})
    assert real.missing() == ["never: def lines are skipped"]
    assert re.search(r"^def conv2d_forward", real.text, re.M)
