"""Blocks of third-party architectures (issue 24) whose BNs fold exactly only with the rules added for them, one
small eval-mode module each, in the zoo's style (models.zoo registers them; seeded, random BN statistics).

- RepMixerStyle (FastViT): `x + gamma * (mixer(x) - norm(x))`, mixer and norm re-parameterizable branches;
- PooledHeadStyle (CoAtNet): BN -> AvgPool2d(2) -> Conv 1x1, unpadded and with count_include_pad=False;
- PreActSumStyle (pre-activation RegNet / Xception): BN(Conv(x) + Conv(shortcut));
- SplitNormStyle (timm lambda layers): Conv -> split along channels -> BN on some parts.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn_conv(cin: int, cout: int, kernel: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class RepMixer(nn.Module):
    """FastViT's RepMixer in its training structure: norm = BN(x); mixer = BN(x) + BN(dw 1x1(x)) + BN(dw kxk(x));
    out = x + gamma * (mixer(x) - norm(x))."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.mixer_identity = nn.BatchNorm2d(dim)
        self.mixer_scale = _bn_conv(dim, dim, 1, dim)
        self.mixer_conv = _bn_conv(dim, dim, kernel, dim)
        self.gamma = nn.Parameter(0.5 * torch.randn(dim, 1, 1))

    def forward(self, x):
        mixer = self.mixer_scale(x) + self.mixer_identity(x)
        mixer = mixer + self.mixer_conv(x)
        return x + self.gamma * (mixer - self.norm(x))


class RepMixerStyle(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.mixers = nn.Sequential(RepMixer(8), RepMixer(8))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.mixers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PooledHeadStyle(nn.Module):
    """CoAtNet's MbConv downsampling: pre-norm BN -> AvgPool2d(2) -> Conv 1x1; then BN -> 3x3 average with
    count_include_pad=False (padded, but only real elements counted) -> Conv 1x1."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pre_norm = nn.BatchNorm2d(8)
        self.down = nn.AvgPool2d(2, 2)
        self.conv = nn.Conv2d(8, 12, 1)
        self.norm = nn.BatchNorm2d(12)
        self.smooth = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.project = nn.Conv2d(12, 8, 1, bias=False)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.conv(self.down(self.pre_norm(x))))
        x = self.project(self.smooth(self.norm(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PreActBlock(nn.Module):
    """timm ResNetV2's pre-activation basic block with a Conv shortcut: x_pre = relu(bn1(x)); out =
    conv2(relu(bn2(conv1(x_pre)))) + shortcut(x_pre)."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        x = torch.relu(self.norm1(x))
        return self.conv2(torch.relu(self.norm2(self.conv1(x)))) + self.shortcut(x)


class PreActSumStyle(nn.Module):
    """A pre-activation stage ending in the network's final BN: BN(Conv(...) + Conv shortcut(...))."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.block = PreActBlock(8, 12)
        self.norm = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.block(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LambdaLayer(nn.Module):
    """timm's LambdaLayer (content lambda only): qkv = Conv 1x1 (no bias); q, k, v = split(qkv, dim=1);
    q = BN(q), v = BN(v), k = softmax over positions; out = q @ (k @ v^T)."""

    def __init__(self, dim: int, dim_out: int, heads: int = 2, dim_qk: int = 4):
        super().__init__()
        self.heads, self.dim_qk, self.dim_v = heads, dim_qk, dim_out // heads
        self.qkv = nn.Conv2d(dim, heads * dim_qk + dim_qk + self.dim_v, 1, bias=False)
        self.norm_q = nn.BatchNorm2d(heads * dim_qk)
        self.norm_v = nn.BatchNorm2d(self.dim_v)

    def forward(self, x):
        _, _, height, width = x.shape
        positions = height * width
        q, k, v = torch.split(self.qkv(x), [self.heads * self.dim_qk, self.dim_qk, self.dim_v], dim=1)
        q = self.norm_q(q).reshape(-1, self.heads, self.dim_qk, positions).transpose(-1, -2)
        v = self.norm_v(v).reshape(-1, self.dim_v, positions).transpose(-1, -2)
        k = k.reshape(-1, self.dim_qk, positions).softmax(dim=-1)
        content = (q @ (k @ v).unsqueeze(1)).transpose(-1, -2)  # [B, heads, dim_v, positions]
        return content.reshape(-1, self.heads * self.dim_v, height, width)


class SplitNormStyle(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.attention = LambdaLayer(8, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.attention(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TokenAttention(nn.Module):
    """Multi-head self-attention on [B, N, C] tokens; with `pool` (Next-ViT's E-MHSA, sr_ratio 2), keys and values
    come from tokens averaged 4 to 1 (AvgPool1d) and normalized by a BatchNorm1d."""

    def __init__(self, dim: int, heads: int = 2, pool: bool = False):
        super().__init__()
        self.heads = heads
        self.q, self.kv = nn.Linear(dim, dim, bias=pool), nn.Linear(dim, 2 * dim, bias=pool)
        self.proj = nn.Linear(dim, dim)
        self.pool = nn.Sequential(nn.AvgPool1d(4, 4), nn.BatchNorm1d(dim)) if pool else None

    def forward(self, x):
        batch, tokens, dim = x.shape
        q = self.q(x).reshape(batch, tokens, self.heads, -1).transpose(1, 2)
        if self.pool is not None:
            x = self.pool(x.transpose(1, 2)).transpose(1, 2)
        k, v = self.kv(x).reshape(batch, -1, 2, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-1, -2) * (dim // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))


class TokenBlock(nn.Module):
    """FastViT's AttentionBlock / Next-ViT's NTB: x + attention(BN2d(x) as [B, HW, C] tokens), back to NCHW."""

    def __init__(self, dim: int, pool: bool):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.attention = TokenAttention(dim, pool=pool)

    def forward(self, x):
        batch, channels, height, width = x.shape
        tokens = self.norm(x).reshape(batch, channels, height * width).transpose(1, 2)
        out = self.attention(tokens).transpose(1, 2).reshape(batch, channels, height, width)
        return x + out


class TokenNormStyle(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(TokenBlock(8, pool=False), TokenBlock(8, pool=True))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BottleneckAttention(nn.Module):
    """timm's BottleneckAttn (BoTNet), a learned [HW, HW] logit bias in place of relative position embeddings:
    qkv = Conv 1x1; q, k, v split and reshaped to [B * heads, ., HW]; softmax(q kᵀ * scale + bias) @ v, reshaped
    back to [B, C, H, W], then (stride 2) AvgPool2d(2)."""

    def __init__(self, dim: int, heads: int = 2, size: int = 4, stride: int = 1):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.bias = nn.Parameter(0.1 * torch.randn(size * size, size * size))
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x):
        batch, _, height, width = x.shape
        head = self.dim // self.heads
        q, k, v = torch.split(self.qkv(x), [self.dim] * 3, dim=1)
        q = q.reshape(batch * self.heads, head, -1).transpose(-1, -2)
        k = k.reshape(batch * self.heads, head, -1)
        v = v.reshape(batch * self.heads, head, -1).transpose(-1, -2)
        attention = (q @ k * head ** -0.5 + self.bias).softmax(dim=-1)
        out = (attention @ v).transpose(-1, -2).reshape(batch, self.dim, height, width)
        return self.pool(out)


class BotNetStyle(nn.Module):
    """BoTNet bottlenecks: Conv1x1+BN+ReLU -> self-attention -> BN (post_attn) + ReLU -> Conv1x1+BN, residual."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.attentions = nn.ModuleList([BottleneckAttention(8, stride=1), BottleneckAttention(8, stride=2)])
        self.post = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + torch.relu(self.post[0](self.attentions[0](x)))
        x = torch.relu(self.post[1](self.attentions[1](x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
