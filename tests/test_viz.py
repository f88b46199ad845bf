"""Tests for gemma_lab.viz: every function is checked on the data it drew, not only that it ran."""

import matplotlib

matplotlib.use("Agg")

import html
import math

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from gemma_lab import viz

TOKENS = ["<bos>", "The", " cat", " sat", "\n", " $x$"]
N = len(TOKENS)


def causal_pattern(n: int, seed: int = 0, heads: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, n) if heads is None else (heads, n, n)
    scores = torch.randn(shape, generator=gen)
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def tick_texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def readable(tokens) -> list[str]:
    return [viz.readable_token(t) for t in tokens]


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """No function may leave a figure registered with pyplot (it would be displayed twice)."""
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def test_readable_token():
    assert viz.readable_token(" the") == "␣the"
    assert viz.readable_token("▁the") == "␣the"
    assert viz.readable_token("a\nb\t") == "a↵b⇥"
    assert viz.readable_token("") == "∅"
    assert viz.readable_token("$x$") == "$x$"


def test_attention_pattern_draws_the_pattern_with_token_labels_and_causal_mask():
    pattern = causal_pattern(N)
    fig = viz.attention_pattern(pattern, TOKENS, title="L0 H1")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    drawn = ax.images[0].get_array()
    np.testing.assert_allclose(drawn.data, pattern.numpy(), rtol=1e-6)
    future = np.triu(np.ones((N, N), dtype=bool), k=1)
    np.testing.assert_array_equal(np.ma.getmaskarray(drawn), future)
    assert tick_texts(ax.get_xticklabels()) == readable(TOKENS)
    assert tick_texts(ax.get_yticklabels()) == readable(TOKENS)
    assert ax.get_title() == "L0 H1"
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    # Tokens with '$' are drawn literally, not as mathtext.
    assert not any(t.get_parse_math() for t in ax.get_xticklabels())


def test_attention_pattern_masks_nan_and_custom_masks_and_handles_kv_cache_queries():
    pattern = np.full((2, 4), 0.25)
    pattern[0, 1] = np.nan
    window = np.array([[True, False, False, False], [True, True, False, False]])
    fig = viz.attention_pattern(pattern, list("abcd"), mask=window)
    ax = fig.axes[0]
    drawn_mask = np.ma.getmaskarray(ax.images[0].get_array())
    expected = window.copy()
    expected[0, 1] = True
    np.testing.assert_array_equal(drawn_mask, expected)
    # Two queries against four keys: the queries are the last two tokens.
    assert tick_texts(ax.get_yticklabels()) == ["c", "d"]
    assert tick_texts(ax.get_xticklabels()) == ["a", "b", "c", "d"]
    causal = viz.attention_pattern(pattern, list("abcd")).axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(causal)[0], [False, True, False, True])


def test_attention_pattern_accepts_bfloat16_with_grad():
    pattern = causal_pattern(N).to(torch.bfloat16).requires_grad_(True)
    fig = viz.attention_pattern(pattern, TOKENS)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array().data, pattern.detach().float().numpy())


def test_attention_pattern_rejects_tokens_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"6 key positions.*5 tokens"):
        viz.attention_pattern(causal_pattern(N), TOKENS[:5])
    with pytest.raises(ValueError, match="q_pos, k_pos"):
        viz.attention_pattern(causal_pattern(N, heads=2), TOKENS)


def test_attention_pattern_thins_tick_labels_on_long_sequences_but_keeps_all_data():
    n = 100
    pattern = causal_pattern(n)
    tokens = [f"t{i}" for i in range(n)]
    ax = viz.attention_pattern(pattern, tokens).axes[0]
    assert ax.images[0].get_array().shape == (n, n)
    ticks = list(ax.get_xticks())
    assert 1 < len(ticks) <= viz.MAX_TICK_LABELS
    assert tick_texts(ax.get_xticklabels()) == [tokens[int(i)] for i in ticks]


def test_attention_pattern_draws_into_a_given_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert viz.attention_pattern(causal_pattern(N), TOKENS, ax=ax) is fig
    assert len(ax.images) == 1


def test_attention_heads_grid_one_panel_per_head_on_a_shared_scale():
    patterns = causal_pattern(N, heads=6)
    fig = viz.attention_heads_grid(patterns, TOKENS, layer=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    for h, ax in enumerate(panels):
        np.testing.assert_allclose(ax.images[0].get_array().data, patterns[h].numpy(), rtol=1e-6)
        assert ax.get_title() == f"L3 H{h}"
    assert len({ax.images[0].get_clim() for ax in panels}) == 1
    # Row labels on the first column, column labels on the bottom panels.
    assert tick_texts(panels[0].get_yticklabels()) == readable(TOKENS)
    assert tick_texts(panels[5].get_xticklabels()) == readable(TOKENS)
    assert list(panels[1].get_yticks()) == []
    with pytest.raises(ValueError, match=r"6 key positions.*4 tokens"):
        viz.attention_heads_grid(patterns, TOKENS[:4])


def test_logit_lens_heatmap_colours_by_probability_and_annotates_top_tokens():
    n_layer = 4
    probs = torch.rand(n_layer, N, generator=torch.Generator().manual_seed(1))
    top = [[f"{layer}:{tok}" for tok in [" Paris", "$", "\n", "a", "b", "c"]] for layer in range(n_layer)]
    labels = ["embed", "0", "1", "2"]
    fig = viz.logit_lens_heatmap(probs, top, TOKENS, layer_labels=labels)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), probs.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.texts] == [viz.readable_token(s) for row in top for s in row]
    # Each annotation sits on its own cell.
    assert [t.get_position() for t in ax.texts[:2]] == [(0, 0), (1, 0)]
    assert tick_texts(ax.get_xticklabels()) == readable(TOKENS)
    assert tick_texts(ax.get_yticklabels()) == labels
    assert not viz.logit_lens_heatmap(probs, top, TOKENS, annotate=False).axes[0].texts


def test_logit_lens_heatmap_rejects_mismatched_shapes():
    probs = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"3 pos.*2 tokens"):
        viz.logit_lens_heatmap(probs, [["a"] * 3] * 2, ["x", "y"])
    with pytest.raises(ValueError, match=r"2 layers.*1 rows"):
        viz.logit_lens_heatmap(probs, [["a"] * 3], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"top_tokens\[1\] has 2"):
        viz.logit_lens_heatmap(probs, [["a"] * 3, ["a"] * 2], ["x", "y", "z"])


def test_top_k_bars_from_a_full_distribution():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    vocab = ["a", " Paris", "c", "$d$", "\n"]
    fig = viz.top_k_bars(probs, vocab, k=3, highlight=" Paris")
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [0.4, 0.3, 0.15], rtol=1e-6)
    assert tick_texts(ax.get_yticklabels()) == ["␣Paris", "$d$", "↵"]
    assert [t.get_text().strip() for t in ax.texts] == ["40.0%", "30.0%", "15.0%"]
    colours = [mcolors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colours[0] != colours[1] == colours[2]
    # Largest at the top: the y axis is inverted so rank 0 is drawn highest.
    assert ax.yaxis_inverted()


def test_top_k_bars_from_pairs_ids_and_callables():
    values = np.array([0.2, 0.7, 0.1])
    ax = viz.top_k_bars((values, ["x", "y", "z"])).axes[0]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [0.7, 0.2, 0.1])
    assert tick_texts(ax.get_yticklabels()) == ["y", "x", "z"]

    probs = torch.tensor([0.1, 0.6, 0.3])
    ax = viz.top_k_bars(torch.topk(probs, 2), labels=lambda i: f"tok{i}").axes[0]
    assert tick_texts(ax.get_yticklabels()) == ["tok1", "tok2"]
    ax = viz.top_k_bars(probs, k=2).axes[0]
    assert tick_texts(ax.get_yticklabels()) == ["#1", "#2"]
    with pytest.raises(ValueError, match="3 values but 2 labels"):
        viz.top_k_bars((values, ["x", "y"]))


def test_residual_norms_one_line_per_position_or_the_mean():
    norms = torch.rand(5, N, generator=torch.Generator().manual_seed(2)).cumsum(0)
    labels = ["embed", "0", "1", "2", "3"]
    ax = viz.residual_norms(norms, TOKENS, layer_labels=labels).axes[0]
    assert len(ax.lines) == N
    for pos, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_ydata(), norms[:, pos].numpy(), rtol=1e-6)
    assert tick_texts(ax.get_xticklabels()) == labels
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{i}: {viz.readable_token(t)}" for i, t in enumerate(TOKENS)]

    ax = viz.residual_norms(norms, mean=True).axes[0]
    assert len(ax.lines) == 1
    np.testing.assert_allclose(ax.lines[0].get_ydata(), norms.mean(1).numpy(), rtol=1e-6)

    ax = viz.residual_norms(norms[:, 0], log=True).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), norms[:, 0].numpy(), rtol=1e-6)
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match=r"6 pos.*2 tokens"):
        viz.residual_norms(norms, TOKENS[:2])


def test_patching_heatmap_layer_by_position_is_diverging_and_centred_on_zero():
    values = torch.tensor([[0.5, -2.0, 0.0], [1.0, 0.25, -0.5]])
    ax = viz.patching_heatmap(values, ["a", " b", "c"]).axes[0]
    image = ax.images[0]
    np.testing.assert_allclose(image.get_array(), values.numpy())
    assert image.get_clim() == (-2.0, 2.0)
    assert image.get_cmap().name == "RdBu"
    assert tick_texts(ax.get_xticklabels()) == ["a", "␣b", "c"]
    assert tick_texts(ax.get_yticklabels()) == ["0", "1"]


def test_patching_heatmap_layer_by_head_and_bad_input():
    values = np.arange(8.0).reshape(2, 4)  # all positive: the scale is still symmetric
    ax = viz.patching_heatmap(values, kind="layer x head").axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), values)
    assert ax.images[0].get_clim() == (-7.0, 7.0)
    assert tick_texts(ax.get_xticklabels()) == ["0", "1", "2", "3"]
    assert ax.get_xlabel() == "head"
    with pytest.raises(ValueError, match="kind must be one of"):
        viz.patching_heatmap(values, kind="head")
    with pytest.raises(ValueError, match=r"4 pos.*3 tokens"):
        viz.patching_heatmap(values, ["a", "b", "c"])


def test_rotary_illustration_vectors_rotate_by_pos_times_frequency():
    d_head, theta, positions, pairs = 16, 10_000.0, [0, 1, 2, 5], (0, 3, 7)
    fig = viz.rotary_illustration(d_head=d_head, positions=positions, theta=theta, pairs=pairs)
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == len(pairs)
    for i, ax in zip(pairs, panels, strict=True):
        freq = theta ** (-2 * i / d_head)
        assert f"({i}, {i + d_head // 2})" in ax.get_title()
        assert len(ax.lines) == len(positions)
        for pos, line in zip(positions, ax.lines, strict=True):
            (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
            assert (x0, y0) == (0.0, 0.0)
            drawn = math.atan2(y1, x1)
            expected = math.atan2(math.sin(pos * freq), math.cos(pos * freq))  # wrapped to (-pi, pi]
            assert drawn == pytest.approx(expected, abs=1e-12)
    # The first pair turns by exactly one radian per position.
    first = panels[0].lines[1]
    assert math.atan2(first.get_ydata()[1], first.get_xdata()[1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pairs"):
        viz.rotary_illustration(d_head=8, pairs=(4,))
    with pytest.raises(ValueError, match="even"):
        viz.rotary_illustration(d_head=7)


def test_colored_tokens_html_escapes_tokens_in_order_with_colours_and_tooltips():
    tokens = ["<b>", " x & y", "\n", '"q"', "z"]
    values = torch.tensor([1.0, -1.0, 0.0, 0.5, float("nan")])
    out = viz.colored_tokens_html(tokens, values)
    assert isinstance(out, str) and out._repr_html_() == out
    assert "<b>" not in out and "&lt;b&gt;" in out
    expected_text = ["&lt;b&gt;", " x &amp; y", "↵<br>", "&quot;q&quot;", "z"]
    where = [out.index(f">{text}</span>") for text in expected_text]
    assert where == sorted(where)
    cmap = matplotlib.colormaps["RdBu"]
    for v in (1.0, -1.0, 0.0):  # default limits are symmetric: -1 and 1 are the ends of the map
        assert mcolors.to_hex(cmap((v + 1) / 2)) in out
    assert 'title="pos 0: 1"' in out and 'title="pos 3: 0.5"' in out and 'title="pos 4: nan"' in out
    with pytest.raises(ValueError, match="5 tokens but 4 values"):
        viz.colored_tokens_html(tokens, values[:4])


def test_colored_tokens_html_respects_limits_and_colormap():
    out = viz.colored_tokens_html(["a", "b"], [0.0, 10.0], cmap="Blues", vmin=0, vmax=10)
    blues = matplotlib.colormaps["Blues"]
    assert mcolors.to_hex(blues(0.0)) in out and mcolors.to_hex(blues(1.0)) in out


def test_tensor_card_title_slice_and_stats():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, 8, 16, generator=gen)
    fig = viz.tensor_card(q, "blocks.0.attn.hook_q", ("batch", "pos", "head", "d_head"))
    ax = fig.axes[0]
    title = ax.get_title(loc="left")
    assert "blocks.0.attn.hook_q  [batch=2, pos=7, head=8, d_head=16]" in title
    assert "batch=0, pos=0" in title
    np.testing.assert_allclose(ax.images[0].get_array(), q[0, 0].numpy(), rtol=1e-6)
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("head", "d_head")
    stats = ax.texts[-1].get_text()
    arr = q.double().numpy()
    for key, value in [("mean", arr.mean()), ("std", arr.std()), ("min", arr.min()), ("max", arr.max()),
                       ("norm", np.linalg.norm(arr))]:
        assert f"{key} {value:.4g}" in stats


def test_tensor_card_chosen_axes_truncation_and_bad_input():
    x = np.arange(2 * 100 * 6, dtype=np.float32).reshape(2, 100, 6)
    ax = viz.tensor_card(x, "resid", ("batch", "pos", "d_model"), show=("d_model", "pos"), max_rows=4).axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), x[0].T[:4])
    assert "first 4 of 6 d_model" in ax.get_title(loc="left")
    ax = viz.tensor_card(x[0, 0], "vec", ("d_model",)).axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), x[0, 0][None, :])
    with pytest.raises(ValueError, match=r"3 axes.*2 axis names"):
        viz.tensor_card(x, "resid", ("batch", "pos"))
    with pytest.raises(ValueError, match="show must name"):
        viz.tensor_card(x, "resid", ("batch", "pos", "d_model"), show=("pos", "head"))


def test_every_figure_renders():
    # Drawing catches errors that only appear at render time (e.g. a token parsed as mathtext).
    figures = [
        viz.attention_pattern(causal_pattern(N), TOKENS),
        viz.attention_heads_grid(causal_pattern(N, heads=3), TOKENS),
        viz.logit_lens_heatmap(np.full((2, N), 0.5), [TOKENS, TOKENS], TOKENS),
        viz.top_k_bars((np.array([0.5, 0.2]), ["$a", "b$"])),
        viz.residual_norms(np.ones((3, N)), TOKENS),
        viz.patching_heatmap(np.zeros((2, N)), TOKENS),
        viz.rotary_illustration(d_head=8, positions=range(3)),
        viz.tensor_card(torch.zeros(3, 4), "w_$x$", ("d_model", "d_mlp")),
        viz.tensor_card(torch.tensor(2.0), "scale", ()),
    ]
    for fig in figures:
        fig.savefig(__import__("io").BytesIO(), format="png", dpi=40)


def test_html_escape_is_the_standard_one():
    # The escaping used must round-trip through the standard library's unescape.
    out = viz.colored_tokens_html(["a<>&'\""], [1.0])
    inner = out.split('">', 2)[-1].split("</span>")[0]
    assert html.unescape(inner) == "a<>&'\""


def test_top_k_bars_probability_axis_ends_at_one_and_labels_fit():
    ax = viz.top_k_bars((np.array([0.997, 0.002]), ["Paris", "Rome"]), highlight="Rome",
                        highlight_color="C2").axes[0]
    assert ax.get_xlim()[1] == 1.0
    inside, beside = ax.texts
    assert inside.get_ha() == "right" and beside.get_ha() == "left"
    assert mcolors.to_hex(ax.patches[1].get_facecolor()) == mcolors.to_hex("C2")
    # Not probabilities (a logit can exceed 1): the axis follows the data.
    ax = viz.top_k_bars((np.array([4.0, 2.0]), ["a", "b"]), value_format="{:.1f}", value_label="logit").axes[0]
    assert ax.get_xlim()[1] == pytest.approx(5.0)


def test_attention_heads_grid_token_labels_are_readable_at_notebook_width():
    tokens = [f"t{i}" for i in range(16)]
    fig = viz.attention_heads_grid(causal_pattern(16, heads=4), tokens)
    panels = [ax for ax in fig.axes if ax.images]
    assert fig.get_size_inches()[0] <= 11.0  # not shrunk to fit a notebook cell
    assert all(label.get_fontsize() >= 8 for label in panels[0].get_yticklabels())
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # 2 x 2, not 3 + 1
