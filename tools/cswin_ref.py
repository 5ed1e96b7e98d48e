"""CSWin Transformer in PyTorch, only as the reference for our parity fixtures (CSWin is not
in timm).

Written for this project from the architecture facts of the official repository
(github.com/microsoft/CSWin-Transformer, `models/cswin.py`) and of EfficientTrain's copy
(github.com/LeapLabTHU/EfficientTrain, `models/cswin.py`, which sets the stripe widths to
[1, 2, R/32, R/32] for an R x R input; at 224 that is the official [1, 2, 7, 7]):

- stem `stage1_conv_embed`: Conv2d(3, C, 7, stride 4, padding 2), tokens, LayerNorm;
- stage s (1..4) blocks `stage{s}.{j}`: x + proj(attn(norm1(x))), x + mlp(norm2(x));
  qkv = Linear(C, 3C, bias); the channels of q, k, v split in halves, each with half the
  heads: `attns.0` attends within vertical stripes (all rows x sw columns), `attns.1` within
  horizontal ones (sw rows x all columns); the last stage has one branch `attns.0` over the
  whole map with all channels and heads;
- LePE: `get_v` = depthwise Conv2d(3x3, padding 1, bias) on v, each stripe treated as its
  own image, added to softmax(q k^T / sqrt(head_dim)) v;
- `merge{1..3}`: Conv2d(3x3, stride 2, padding 1), LayerNorm; `norm`, mean over tokens, `head`;
- nn.LayerNorm (eps 1e-5), GELU MLP with ratio 4, drop path rising linearly over all blocks;
- variants: tiny 64 / [1, 2, 21, 1] / heads [2, 4, 8, 16]; small 64 / [2, 4, 32, 2] /
  [2, 4, 8, 16]; base 96 / [2, 4, 32, 2] / [4, 8, 16, 32].

Module and parameter names are the official ones, so official / EfficientTrain checkpoints
load into this module and into our Rust model unchanged.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    "CSWin_64_12211_tiny_224": (64, [1, 2, 21, 1], [2, 4, 8, 16]),
    "CSWin_64_24322_small_224": (64, [2, 4, 32, 2], [2, 4, 8, 16]),
    "CSWin_96_24322_base_224": (96, [2, 4, 32, 2], [4, 8, 16, 32]),
}


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LePEAttention(nn.Module):
    """Attention inside (hs x ws) windows of a side x side map, plus LePE."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, q, k, v, side, hs, ws):
        b, n, c = q.shape

        def windows_nchw(t):
            # (B, L, C) -> image (B, C, H, W) -> one small image per window (B', C, hs, ws).
            img = t.transpose(1, 2).reshape(b, c, side // hs, hs, side // ws, ws)
            return img.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, hs, ws)

        def heads_first(img):
            # (B', C, hs, ws) -> (B', heads, hs*ws, head_dim)
            return img.reshape(img.shape[0], self.heads, c // self.heads, hs * ws).transpose(2, 3)

        qw, kw, vw = windows_nchw(q), windows_nchw(k), windows_nchw(v)
        lepe = heads_first(self.get_v(vw))
        scale = (c // self.heads) ** -0.5
        attn = torch.softmax((heads_first(qw) * scale) @ heads_first(kw).transpose(-2, -1), dim=-1)
        y = attn @ heads_first(vw) + lepe                       # (B', heads, hs*ws, head_dim)
        y = y.transpose(1, 2).reshape(-1, hs, ws, c)            # (B', hs, ws, C)
        y = y.reshape(b, side // hs, side // ws, hs, ws, c).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(b, n, c)


class CSWinBlock(nn.Module):
    def __init__(self, dim, heads, last_stage, drop_path=0.0):
        super().__init__()
        self.dim = dim
        self.last_stage = last_stage
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, heads)])
        else:
            self.attns = nn.ModuleList([LePEAttention(dim // 2, heads // 2) for _ in range(2)])
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path = drop_path

    def forward(self, x, side, sw):
        c = self.dim
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if self.last_stage:
            y = self.attns[0](q, k, v, side, side, side)
        else:
            h = c // 2
            y = torch.cat([
                self.attns[0](q[..., :h], k[..., :h], v[..., :h], side, side, sw),   # vertical stripes
                self.attns[1](q[..., h:], k[..., h:], v[..., h:], side, sw, side),   # horizontal stripes
            ], dim=-1)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C); parameterless, so the stem's names are `.0` and `.2`."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class MergeBlock(nn.Module):
    def __init__(self, dim, dim_out):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x, side):
        b, n, c = x.shape
        x = self.conv(x.transpose(1, 2).reshape(b, c, side, side))
        return self.norm(x.flatten(2).transpose(1, 2))


class CSWinTransformer(nn.Module):
    def __init__(self, embed_dim, depths, heads, num_classes=1000):
        super().__init__()
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(3, embed_dim, 7, 4, 2), Tokens(), nn.LayerNorm(embed_dim))
        dims = [embed_dim * 2 ** i for i in range(4)]
        for s in range(4):
            blocks = nn.ModuleList([CSWinBlock(dims[s], heads[s], last_stage=(s == 3)) for _ in range(depths[s])])
            setattr(self, f"stage{s + 1}", blocks)
            if s > 0:
                setattr(self, f"merge{s}", MergeBlock(dims[s - 1], dims[s]))
        self.norm = nn.LayerNorm(dims[3])
        self.head = nn.Linear(dims[3], num_classes)

    def forward(self, x):
        r = x.shape[-1]
        assert x.shape[-2] == r and r % 32 == 0, "square inputs, multiples of 32"
        sw = [1, 2, r // 32, r // 32]
        side = r // 4
        x = self.stage1_conv_embed(x)
        for s in range(4):
            if s > 0:
                x = getattr(self, f"merge{s}")(x, side)
                side //= 2
            for blk in getattr(self, f"stage{s + 1}"):
                x = blk(x, side, sw[s])
        return self.head(self.norm(x).mean(dim=1))


def create(name, **kwargs):
    dim, depths, heads = VARIANTS[name]
    return CSWinTransformer(dim, depths, heads, **kwargs)
