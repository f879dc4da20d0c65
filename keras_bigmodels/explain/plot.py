"""`kbm.explain.plot`: pictures of attributions.

`image_overlay`, `bar_chart` and `token_heatmap` draw with matplotlib
(`pip install matplotlib`; imported on first use) and return the figure.
`token_html` returns an HTML string. `heatmap_rgb` and `overlay_rgb` are
NumPy-only and are what the callbacks write to TensorBoard.
"""

import html

import numpy as np


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "kbm.explain.plot needs matplotlib: pip install matplotlib"
        ) from e
    return plt


def _image_2d(a, name):
    a = np.asarray(a, np.float32)
    if a.ndim == 3:
        a = a.sum(-1) if name == "attribution" else a
    if a.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be one image [H, W] or [H, W, C]. Received shape "
            f"{a.shape}"
        )
    return a


def _diverging(v):
    """Blue (negative) - white - red (positive) RGB for v in [-1, 1]."""
    v = np.clip(v, -1.0, 1.0)[..., None]
    white = np.ones(3, np.float32)
    red, blue = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.3, 0.8])
    return np.where(
        v >= 0, white + v * (red - white), white - v * (blue - white)
    ).astype(np.float32)


def heatmap_rgb(attribution, signed=True):
    """A `[H, W, 3]` float RGB heatmap in [0, 1] of one attribution map
    (summed over channels), scaled by its largest absolute value."""
    a = _image_2d(attribution, "attribution")
    scale = np.abs(a).max() or 1.0
    if signed:
        return _diverging(a / scale)
    v = (np.abs(a) / scale)[..., None]
    return (np.array([1.0, 1.0, 1.0]) - v * np.array([0.0, 0.7, 0.9])).astype(
        np.float32
    )


def overlay_rgb(image, attribution, image_weight=0.5, signed=True):
    """The heatmap shaded by a grey-scale copy of the image (multiplied,
    so the image's dark parts darken it), `[H, W, 3]` float in [0, 1]."""
    img = _image_2d(image, "image")
    if img.ndim == 3:
        img = img.mean(-1)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / ((hi - lo) or 1.0)
    heat = heatmap_rgb(attribution, signed)
    shade = 1.0 - image_weight + image_weight * grey
    return (heat * shade[..., None]).clip(0.0, 1.0)


def image_overlay(
    image, attribution, ax=None, image_weight=0.5, signed=True, title=None
):
    """Draws an attribution heatmap over an image.

    Args:
        image: `[H, W]` or `[H, W, C]`.
        attribution: Shaped like `image` (summed over channels).
        ax: Matplotlib axes to draw on. Defaults to a new figure.
        image_weight: How much the image darkens the heatmap (0: the
            heatmap alone, 1: black where the image is darkest). Defaults
            to `0.5`.
        signed: Red positive / blue negative; else magnitude only.
            Defaults to `True`.
        title: Defaults to `None`.

    Returns:
        The matplotlib figure.

    Example:

    ```python
    fig = kbm.explain.plot.image_overlay(x[0], attr[0], title="IG")
    fig.savefig("ig.png")
    ```
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(overlay_rgb(image, attribution, image_weight, signed))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def bar_chart(attribution, feature_names=None, top_k=10, ax=None, title=None):
    """Signed horizontal bars of the `top_k` features by absolute value.

    Args:
        attribution: `[num_features]` for one example.
        feature_names: Defaults to `"x0", "x1", ...`.
        top_k: Defaults to `10`.
        ax: Defaults to a new figure.
        title: Defaults to `None`.

    Returns:
        The matplotlib figure.
    """
    a = np.asarray(attribution, np.float32).reshape(-1)
    names = (
        list(feature_names)
        if feature_names is not None
        else [f"x{i}" for i in range(len(a))]
    )
    if len(names) != len(a):
        raise ValueError(
            f"feature_names has {len(names)} names for {len(a)} features"
        )
    order = np.argsort(-np.abs(a))[:top_k][::-1]
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * len(order) + 1))
    colors = ["#c0392b" if a[i] >= 0 else "#2e64c8" for i in order]
    ax.barh([names[i] for i in order], a[order], color=colors)
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def _check_tokens(tokens, scores):
    tokens = [str(t) for t in tokens]
    s = np.asarray(scores, np.float32).reshape(-1)
    if len(tokens) != len(s):
        raise ValueError(
            f"Got {len(tokens)} tokens and {len(s)} scores; they must match"
        )
    return tokens, s


def token_heatmap(tokens, scores, ax=None, title=None, width=60):
    """Draws tokens on a background coloured by their scores (red positive,
    blue negative), wrapped to the width of the axes.

    Each token is placed after the previous one's drawn extent, so tokens
    never overlap whatever the font and the axes size. Without `ax`, a
    figure about `width` characters wide is made, as tall as the lines
    need.

    Returns:
        The matplotlib figure.
    """
    tokens, s = _check_tokens(tokens, scores)
    scale = np.abs(s).max() or 1.0
    plt = _pyplot()
    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(width * 0.076, 0.75))
        ax.figure.subplots_adjust(left=0.01, right=0.99, top=1, bottom=0)
    ax.set_axis_off()
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pad_pt, gap_pt = 1.5, 3.0
    # Measured widths (pixels) of the tokens as drawn, for wrapping.
    style = dict(fontsize=9, family="monospace", va="bottom")
    probe = ax.text(0, 0, "", **style)
    widths = []
    for t in tokens:
        probe.set_text(t)
        widths.append(probe.get_window_extent(renderer).width)
    probe.remove()
    step = (2 * pad_pt + gap_pt) * fig.dpi / 72.0
    available = ax.get_window_extent(renderer).width
    lines, line, used = [], [], 0.0
    for k, w in enumerate(widths):
        if line and used + w > available:
            lines.append(line)
            line, used = [], 0.0
        line.append(k)
        used += w + step
    lines.append(line)
    if own_figure:
        fig.set_size_inches(fig.get_size_inches()[0], 0.35 * len(lines) + 0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(lines), 0)
    for r, line in enumerate(lines):
        previous = None
        for k in line:
            box = dict(
                facecolor=tuple(_diverging(s[k] / scale)),
                edgecolor="none",
                pad=pad_pt,
            )
            if previous is None:
                previous = ax.text(
                    pad_pt / 72.0, r + 0.75, tokens[k], bbox=box, **style
                )
            else:
                # Anchored to the previous token's extent at draw time.
                previous = ax.annotate(
                    tokens[k],
                    xy=(1, 0),
                    xycoords=previous,
                    xytext=(2 * pad_pt + gap_pt, 0),
                    textcoords="offset points",
                    bbox=box,
                    **style,
                )
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def token_html(tokens, scores):
    """Tokens as HTML `<span>`s with background colours by score.

    Example:

    ```python
    html = kbm.explain.plot.token_html(["a", "great", "film"], [0, 2.1, .3])
    ```
    """
    tokens, s = _check_tokens(tokens, scores)
    scale = np.abs(s).max() or 1.0
    spans = []
    for t, v in zip(tokens, s):
        r, g, b = (_diverging(v / scale) * 255).astype(int)
        spans.append(
            f'<span style="background-color: rgb({r},{g},{b}); '
            f'padding: 1px 2px" title="{v:.4g}">{html.escape(t)}</span>'
        )
    return '<div style="line-height: 1.8">' + " ".join(spans) + "</div>"
