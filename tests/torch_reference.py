"""Test-local PyTorch references in the original repositories' key layout.

`TorchDinoViT`: facebookresearch/dinov2 ViT semantics (keys `patch_embed.proj`, `blocks.i.attn.qkv`,
`ls1.gamma`, ...), position embeddings resized with the original `interpolate_offset=0.1`
scale-factor form or the `_reg` antialiased `size=` form. `TorchDPTHead` / `TorchDepthAnything`:
Depth Anything V2 (`pretrained.` + `depth_head.`). Written from the documented behaviour, NCHW.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
        out = att.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden)
        self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchDinoViT(nn.Module):
    """Original-layout DINOv2; `antialias=True` is the `_reg` resize, else offset 0.1."""

    def __init__(self, dim=64, depth=4, heads=4, grid=5, patch=14, registers=0,
                 swiglu=False, hidden=None, antialias=False):
        super().__init__()
        self.patch, self.registers, self.antialias = patch, registers, antialias
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        hidden = hidden or 4 * dim
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, hh: int, ww: int):
        n = self.pos_embed.shape[1] - 1
        h0, w0 = hh // self.patch, ww // self.patch
        if n == h0 * w0 and hh == ww:
            return self.pos_embed
        m = int(math.sqrt(n))
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.antialias:
            grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=True)
        else:
            grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m),
                                 mode="bicubic", antialias=False)
        assert grid.shape[-2:] == (h0, w0)
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], 1)

    def get_intermediate_layers(self, x, taps):
        """Returns [(normed patch tokens (B, h*w, D), normed cls (B, D))], final normed seq."""
        b, _, hh, ww = x.shape
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], 1)
        t = t + self.interpolate_pos_encoding(hh, ww)
        if self.registers:
            t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], 1)
        outs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in taps:
                n = self.norm(t)
                outs.append((n[:, 1 + self.registers:], n[:, 0]))
        return outs, self.norm(t)


# ------------------------------------------------------------------ Depth Anything V2 DPT


def _conv3(cin, cout, stride=1, bias=True):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


class ResidualConvUnit(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.conv1, self.conv2 = _conv3(f, f), _conv3(f, f)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.out_conv = nn.Conv2d(f, f, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(f), ResidualConvUnit(f)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        kw = {"scale_factor": 2} if size is None else {"size": size}
        x = F.interpolate(x, mode="bilinear", align_corners=True, **kw)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, f, oc):
        super().__init__()
        for i in range(4):
            setattr(self, f"layer{i + 1}_rn", _conv3(oc[i], f, bias=False))
            setattr(self, f"refinenet{i + 1}", FeatureFusionBlock(f))
        self.output_conv1 = _conv3(f, f // 2)
        self.output_conv2 = nn.Sequential(_conv3(f // 2, 32), nn.ReLU(), nn.Conv2d(32, 1, 1),
                                          nn.ReLU(), nn.Identity())


class TorchDPTHead(nn.Module):
    def __init__(self, dim, f, oc):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], 4, 4), nn.ConvTranspose2d(oc[1], oc[1], 2, 2),
            nn.Identity(), nn.Conv2d(oc[3], oc[3], 3, 2, 1)])
        self.scratch = Scratch(f, oc)

    def forward(self, tokens, ph, pw):
        ls = []
        for i, x in enumerate(tokens):
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], ph, pw)
            ls.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i + 1}_rn")(x) for i, x in enumerate(ls))
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        out = F.interpolate(s.output_conv1(p1), (ph * 14, pw * 14), mode="bilinear",
                            align_corners=True)
        return s.output_conv2(out), (p4, p3, p2, p1)


class TorchDepthAnything(nn.Module):
    """Original DA V2 layout: `pretrained` ViT (offset-0.1 resize) + `depth_head`."""

    def __init__(self, dim=64, depth=4, heads=4, grid=5, f=16, oc=(16, 32, 64, 64),
                 taps=(0, 1, 2, 3)):
        super().__init__()
        self.taps = taps
        self.pretrained = TorchDinoViT(dim, depth, heads, grid)
        self.depth_head = TorchDPTHead(dim, f, oc)

    def forward(self, x):
        ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
        outs, _ = self.pretrained.get_intermediate_layers(x, self.taps)
        depth, paths = self.depth_head([o[0] for o in outs], ph, pw)
        return F.relu(depth).squeeze(1), paths, outs[-1][0]


def randomize_(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Reinitialises every parameter so that a wrong op cannot hide behind tiny default weights:
    weights N(0, 1/fan_in), biases N(0, std), tokens and position embeddings N(0, 0.5),
    LayerNorm weights and LayerScale 1 + N(0, std)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "token" in name or "pos" in name:
                p.copy_(0.5 * noise)
            elif name.endswith(("gamma", "lambda1")) or (p.ndim == 1 and "norm" in name
                                                        and name.endswith("weight")):
                p.copy_(1.0 + std * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(std * noise)
    return module


def original_state_shapes(dim: int, depth: int, *, registers: int = 0, swiglu_hidden: int = 0,
                          grid: int = 37, dpt: tuple | None = None) -> dict:
    """Zero-cost `{key: zero array view}` with the shapes of a real original-layout checkpoint
    (dinov2, or Depth Anything V2 when `dpt=(features, out_channels)`), per weights.md."""
    s = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim), "mask_token": (1, dim),
         "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,),
         "norm.weight": (dim,), "norm.bias": (dim,)}
    if registers:
        s["register_tokens"] = (1, registers, dim)
    hid = swiglu_hidden or 4 * dim
    ffn = ({"w12": (2 * hid, dim), "w3": (dim, hid)} if swiglu_hidden
           else {"fc1": (hid, dim), "fc2": (dim, hid)})
    for i in range(depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s[b + n + ".weight"] = s[b + n + ".bias"] = (dim,)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (dim, dim), (dim,)
        s[b + "ls1.gamma"] = s[b + "ls2.gamma"] = (dim,)
        for n, shp in ffn.items():
            s[b + f"mlp.{n}.weight"], s[b + f"mlp.{n}.bias"] = shp, (shp[0],)
    if dpt is not None:
        f, oc = dpt
        s = {"pretrained." + k: v for k, v in s.items()}
        h = "depth_head."
        conv = {}
        for i, c in enumerate(oc):
            conv[f"projects.{i}"] = (c, dim, 1, 1)
            conv[f"scratch.layer{i + 1}_rn"] = (f, c, 3, 3)
            for u in ("resConfUnit1", "resConfUnit2"):
                for cv in ("conv1", "conv2"):
                    conv[f"scratch.refinenet{i + 1}.{u}.{cv}"] = (f, f, 3, 3)
            conv[f"scratch.refinenet{i + 1}.out_conv"] = (f, f, 1, 1)
        conv.update({"resize_layers.0": (oc[0], oc[0], 4, 4),
                     "resize_layers.1": (oc[1], oc[1], 2, 2),
                     "resize_layers.3": (oc[3], oc[3], 3, 3),
                     "scratch.output_conv1": (f // 2, f, 3, 3),
                     "scratch.output_conv2.0": (32, f // 2, 3, 3),
                     "scratch.output_conv2.2": (1, 32, 1, 1)})
        for k, shp in conv.items():
            s[h + k + ".weight"] = shp
            if not k.endswith("_rn"):
                s[h + k + ".bias"] = (shp[0],)
    zero = np.zeros((), np.float32)
    return {k: np.broadcast_to(zero, v) for k, v in s.items()}
