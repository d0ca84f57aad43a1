"""ACmix: mixing local self-attention and convolution (Pan et al., CVPR 2022, arXiv 2111.14556).

Written from the paper (Sec. 3.3, Fig. 2), ResNet flavour:

* Stage I (shared): three 1x1 convs with bias give q, k, v (``in_dim -> out_dim`` each),
  viewed as ``head`` groups of ``head_dim = out_dim / head`` channels.
* Attention path: SASA-style local-window attention. Each query attends to the
  ``kernel_att x kernel_att`` window around it (keys and values reflection-padded and
  unfolded), logits ``q . (k + r) / sqrt(head_dim)`` with the relative position
  ``r = p(query) - p(key)``, ``p`` a 1x1 conv (2 -> head_dim) of the normalised (x, y)
  coordinates in [-1, 1]; softmax over the window.
* Convolution path: a light fc (1x1 conv over the ``3 * head`` q/k/v groups, no bias) makes
  ``kernel_conv^2`` maps per head-dim index; a grouped ``kernel_conv x kernel_conv`` conv
  (``groups = head_dim``, bias, initialised to one-hot *shift* kernels and learnable) shifts
  and sums them.
* Mix: ``out = alpha * F_att + beta * F_conv``, learnable scalars initialised to 0.5 / 0.5.
  ``gate=True`` (an addition, not in the paper) replaces the scalars by an input-dependent
  gate: GAP(x) -> Linear -> ReLU -> Linear(2) -> softmax, whose last layer starts at zero so
  the initial weights are 0.5 / 0.5 as well.

Choices and deviations:

* Stride ``s``: queries (and their positions) are subsampled ``[::s, ::s]`` and the windows
  are unfolded with stride ``s``; the shift conv has stride ``s``. Both paths give
  ``ceil(H / s) x ceil(W / s)``, like a 3x3 / pad 1 / stride ``s`` conv. q/k/v are computed
  at the input resolution.
* Tiny maps: reflection padding needs ``pad < H, W``. When the map is smaller (e.g. 1x1 or
  2x2 with ``kernel_att = 7``) the window is zero-padded instead and the out-of-image
  positions are masked out of the softmax (attention over the valid positions only).
* Keys' positions are reflection-padded with the keys, so ``r`` is the true offset to the
  pixel whose content a padded key holds.
* Channel order: the shift conv's outputs come grouped by head-dim index; they are permuted
  back to the attention path's (head, head_dim) order so both paths mix channel-aligned.
* ``out_dim`` must be divisible by ``head``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ACmix"]


def _axis(n: int, ref: torch.Tensor) -> torch.Tensor:
    """``linspace(-1, 1, n)`` in ``ref``'s dtype, written with ``arange``: the ONNX exporter's
    ``linspace`` computes in float64, which turns the whole block into float64 (OpenVINO rejects it)."""
    i = torch.arange(n, device=ref.device, dtype=ref.dtype)
    return i * (2.0 / (n - 1)) - 1.0 if n > 1 else i - 1.0


def _coords(h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    """Normalised (x, y) coordinates in [-1, 1] as a (1, 2, h, w) tensor."""
    ys, xs = _axis(h, ref), _axis(w, ref)
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).unsqueeze(0)


class ACmix(nn.Module):
    """ACmix block ``in_dim -> out_dim`` (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_att: int = 7, head: int = 4,
                 kernel_conv: int = 3, stride: int = 1, gate: bool = False):
        super().__init__()
        if out_dim % head:
            raise ValueError(f"ACmix out_dim ({out_dim}) must be divisible by head ({head})")
        if kernel_att % 2 == 0 or kernel_conv % 2 == 0:
            raise ValueError("ACmix kernel_att and kernel_conv must be odd")
        self.out_dim, self.head, self.head_dim = out_dim, head, out_dim // head
        self.kernel_att, self.kernel_conv, self.stride = kernel_att, kernel_conv, int(stride)
        self.pad = kernel_att // 2
        self.q = nn.Conv2d(in_dim, out_dim, 1)
        self.k = nn.Conv2d(in_dim, out_dim, 1)
        self.v = nn.Conv2d(in_dim, out_dim, 1)
        self.pos = nn.Conv2d(2, self.head_dim, 1)
        kk = kernel_conv * kernel_conv
        self.fc = nn.Conv2d(3 * head, kk, 1, bias=False)
        self.shift = nn.Conv2d(kk * self.head_dim, out_dim, kernel_conv, stride=self.stride,
                               padding=kernel_conv // 2, groups=self.head_dim, bias=True)
        self.gate = None
        if gate:
            hidden = max(8, in_dim // 4)
            self.gate = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        else:
            self.rate_att = nn.Parameter(torch.tensor(0.5))
            self.rate_conv = nn.Parameter(torch.tensor(0.5))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """One-hot shift kernels (map j -> offset (j // k, j % k)), zero shift bias, zero gate output."""
        k = self.kernel_conv
        w = torch.zeros(k * k, k, k)
        for j in range(k * k):
            w[j, j // k, j % k] = 1.0
        self.shift.weight.copy_(w.unsqueeze(0).expand_as(self.shift.weight))
        self.shift.bias.zero_()
        if self.gate is not None:
            nn.init.zeros_(self.gate[-1].weight)
            nn.init.zeros_(self.gate[-1].bias)

    def _windows(self, t: torch.Tensor, reflect: bool) -> torch.Tensor:
        """(B, c, H, W) -> (B, c, kernel_att^2, L): padded, unfolded windows at the query stride."""
        b, c = t.shape[:2]
        t = F.pad(t, [self.pad] * 4, mode="reflect" if reflect else "constant")
        return F.unfold(t, self.kernel_att, stride=self.stride).view(b, c, self.kernel_att ** 2, -1)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, _, h, w = q.shape
        s, nh, hd = self.stride, self.head, self.head_dim
        ho, wo = -(-h // s), -(-w // s)
        reflect = min(h, w) > self.pad
        pe = self.pos(_coords(h, w, q))  # (1, hd, h, w)
        q = (q[:, :, ::s, ::s] * hd ** -0.5).reshape(b, nh, hd, 1, ho * wo)
        k_win = self._windows(k, reflect).view(b, nh, hd, -1, ho * wo)
        v_win = self._windows(v, reflect).view(b, nh, hd, -1, ho * wo)
        rel = pe[:, :, ::s, ::s].reshape(1, 1, hd, 1, ho * wo) - self._windows(pe, reflect).unsqueeze(1)
        # logits: (B, nh, L, 1, hd) @ (B, nh, L, hd, K) -> (B, nh, L, 1, K)
        logits = q.permute(0, 1, 4, 3, 2) @ (k_win + rel).permute(0, 1, 4, 2, 3)
        if not reflect:  # zero-padded window: keep only in-image positions
            valid = self._windows(k.new_ones(1, 1, h, w), False)  # (1, 1, K, L)
            logits = logits.masked_fill(valid.permute(0, 1, 3, 2).unsqueeze(3) == 0, float("-inf"))
        attn = logits.softmax(dim=-1)
        out = attn @ v_win.permute(0, 1, 4, 3, 2)  # (B, nh, L, 1, hd)
        return out.squeeze(3).permute(0, 1, 3, 2).reshape(b, self.out_dim, ho, wo)

    def _convolution(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, _, h, w = q.shape
        nh, hd = self.head, self.head_dim
        groups = torch.cat([t.reshape(b, nh, hd, h * w) for t in (q, k, v)], dim=1)  # (B, 3nh, hd, HW)
        maps = self.fc(groups)  # (B, k^2, hd, HW)
        maps = maps.transpose(1, 2).reshape(b, -1, h, w)  # grouped by head-dim index
        out = self.shift(maps)  # channel o = (d = o // nh, head = o % nh)
        ho, wo = out.shape[-2:]
        return out.view(b, hd, nh, ho, wo).transpose(1, 2).reshape(b, self.out_dim, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        f_att = self._attention(q, k, v)
        f_conv = self._convolution(q, k, v)
        if self.gate is None:
            return self.rate_att * f_att + self.rate_conv * f_conv
        wts = self.gate(x.mean(dim=(2, 3))).softmax(dim=1)
        return wts[:, 0].view(-1, 1, 1, 1) * f_att + wts[:, 1].view(-1, 1, 1, 1) * f_conv
