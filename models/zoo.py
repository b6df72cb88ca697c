"""Small reference architectures that exercise every Conv/BN arrangement bnfold has to handle.

Each factory returns an eval-mode `nn.Module` whose BatchNorm layers carry seeded random statistics: running
mean ~ 0.5 * N(0, 1), running variance ~ U(0.5, 2), gamma ~ N(1, 0.5) (some negative), beta ~ 0.5 * N(0, 1).
Untrained BN (mean 0, variance 1, gamma 1, beta 0) is nearly the identity, so folding it would prove nothing.
The models are tiny (well under 1 MB of weights each) so exporting and folding all of them takes seconds.

Every factory is a valid `bnfold export` target, e.g.
    bnfold export models.zoo:resnet_style -o resnet.onnx --input-shape 1x3x32x32 --fold
and `INPUT_SHAPES[name]` is the example input shape each one is meant for.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0


def randomize_batchnorm_statistics(module: nn.Module, seed: int = SEED) -> nn.Module:
    """Give every BatchNorm layer non-trivial statistics and affine parameters, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
                continue
            channels = layer.num_features
            layer.running_mean.copy_(0.5 * torch.randn(channels, generator=generator))
            layer.running_var.copy_(0.5 + 1.5 * torch.rand(channels, generator=generator))
            if layer.affine:
                layer.weight.copy_(1.0 + 0.5 * torch.randn(channels, generator=generator))
                layer.bias.copy_(0.5 * torch.randn(channels, generator=generator))
    return module


def _build(factory, seed: int = SEED) -> nn.Module:
    """Construct with seeded weights without disturbing the caller's global RNG, then randomize BN, eval()."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    return randomize_batchnorm_statistics(module, seed).eval()


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two Conv+BN, identity or strided 1x1 Conv+BN shortcut, Add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn_relu(3, 16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand Conv+BN+ReLU6, depthwise 3x3 Conv+BN+ReLU6, 1x1 project Conv+BN (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_skip else out


class MobileNetStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 16, stride=2),
            InvertedResidual(16, 16, stride=1, expand=2),
            InvertedResidual(16, 24, stride=2, expand=3),
            InvertedResidual(24, 24, stride=1, expand=3),
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


class ConvTransposeDecoder(nn.Module):
    """Upsampling decoder: ConvTranspose+BN plain (with and without bias), grouped (groups=2) and depthwise."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(16, 12, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.up2 = nn.ConvTranspose2d(12, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.up3 = nn.ConvTranspose2d(8, 8, 3, stride=1, padding=1, groups=8, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.up1(x)))
        x = torch.relu(self.bn2(self.up2(x)))
        x = torch.relu(self.bn3(self.up3(x)))
        return torch.tanh(self.out(x))


class MlpBn1d(nn.Module):
    """Tabular MLP: Linear(+bias)->BatchNorm1d->ReLU, Linear(no bias)->BatchNorm1d->ReLU, Linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.bn1 = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, 48, bias=False)
        self.bn2 = nn.BatchNorm1d(48)
        self.fc3 = nn.Linear(48, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.fc1(x)))
        x = torch.relu(self.bn2(self.fc2(x)))
        return self.fc3(x)


class AudioConv1d(nn.Module):
    """Raw-waveform 1-D net: strided, dilated and depthwise Conv1d each followed by BatchNorm1d."""

    def __init__(self, num_classes: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 9, stride=4, padding=4),
            nn.BatchNorm1d(16),
            nn.ReLU(inplace=True),
            nn.Conv1d(16, 24, 5, padding=4, dilation=2, bias=False),
            nn.BatchNorm1d(24),
            nn.ReLU(inplace=True),
            nn.Conv1d(24, 24, 3, padding=1, groups=24, bias=False),
            nn.BatchNorm1d(24),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=-1))


class Conv3dNet(nn.Module):
    """Video-style 3-D net: Conv3d+BatchNorm3d with and without conv bias."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(2, 8, 3, padding=1),
            nn.BatchNorm3d(8),
            nn.ReLU(inplace=True),
            nn.Conv3d(8, 12, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(12),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool3d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


class DenseLayer(nn.Module):
    """DenseNet layer, pre-activation: BN->ReLU->Conv1x1 then BN->ReLU->Conv3x3, output concatenated to input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return torch.cat([x, out], dim=1)


class DenseNetBlock(nn.Module):
    """Dense block, then a transition BN->Conv1x1 (BN feeding a conv directly), then a standalone final BN."""

    def __init__(self, cin: int = 8, growth: int = 6, layers: int = 3):
        super().__init__()
        self.layers = nn.Sequential(*(DenseLayer(cin + i * growth, growth) for i in range(layers)))
        channels = cin + layers * growth
        self.transition_norm = nn.BatchNorm2d(channels)
        self.transition_conv = nn.Conv2d(channels, channels // 2, 1)
        self.final_norm = nn.BatchNorm2d(channels // 2)

    def forward(self, x):
        x = self.transition_conv(self.transition_norm(self.layers(x)))
        x = nn.functional.avg_pool2d(x, 2)
        return torch.relu(self.final_norm(x))


class TwoBranch(nn.Module):
    """A conv whose output feeds two BNs and a skip, and one conv (shared weights) applied to both branches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn_left = nn.BatchNorm2d(16)
        self.bn_right = nn.BatchNorm2d(16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_shared_left = nn.BatchNorm2d(16)
        self.bn_shared_right = nn.BatchNorm2d(16)

    def forward(self, x):
        stem = self.stem(x)
        left = self.bn_shared_left(self.shared(torch.relu(self.bn_left(stem))))
        right = self.bn_shared_right(self.shared(torch.sigmoid(self.bn_right(stem))))
        return torch.relu(left + right + stem)


class RepVGGBlock(nn.Module):
    """RepVGG's training structure: Conv3x3+BN + Conv1x1+BN (+ BN(x) when the shape is kept), summed, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.identity = nn.BatchNorm2d(cout) if stride == 1 and cin == cout else None

    def forward(self, x):
        out = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return torch.relu(out)


class RepVGGStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(RepVGGBlock(3, 16, 2), RepVGGBlock(16, 16), RepVGGBlock(16, 32, 2),
                                      RepVGGBlock(32, 32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


class MobileOneBlock(nn.Module):
    """MobileOne's training structure: k parallel kxk Conv+BN, a 1x1 Conv+BN "scale" branch when k > 1, and BN(x)
    when the shape is kept, summed, ReLU. `groups=channels` is the depthwise stage, groups=1 the pointwise one."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, branches: int = 3):
        super().__init__()

        def conv_bn(size: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, size, stride, size // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout))

        self.convs = nn.ModuleList(conv_bn(kernel) for _ in range(branches))
        self.scale = conv_bn(1) if kernel > 1 else None
        self.identity = nn.BatchNorm2d(cout) if stride == 1 and cin == cout else None

    def forward(self, x):
        out = self.scale(x) if self.scale is not None else 0
        if self.identity is not None:
            out = out + self.identity(x)
        for conv in self.convs:
            out = out + conv(x)
        return torch.relu(out)


class MobileOneStyle(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            MobileOneBlock(3, 16, 3, stride=2, branches=1),
            MobileOneBlock(16, 16, 3, groups=16),  # depthwise
            MobileOneBlock(16, 16, 1),  # pointwise, with identity
            MobileOneBlock(16, 16, 3, stride=2, groups=16),
            MobileOneBlock(16, 24, 1),  # pointwise, no identity
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(torch.flatten(x, 1))


class MixConvStyle(nn.Module):
    """timm's MixedConv2d: the channels split over parallel 3x3 / 5x5 / 7x7 convs, concatenated, then one BN."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn_relu(3, 12, 3, stride=2)
        self.mixed = nn.ModuleList(nn.Conv2d(12, 8, k, padding=k // 2, bias=False) for k in (3, 5, 7))
        self.bn = nn.BatchNorm2d(24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn(torch.cat([conv(x) for conv in self.mixed], dim=1)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LinearNorm(nn.Module):
    """timm LeViT's LinearNorm: Linear without bias on [B, N, C] tokens, BatchNorm1d over the flattened tokens."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class TokenMlp(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.first, self.second = LinearNorm(16, 32), LinearNorm(32, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.second(torch.relu(self.first(x)))
        return self.head(x.mean(dim=1))


class ConvMixerHead(nn.Module):
    """ConvMixer's end: a last BN, then global average pooling, flatten and the classifier (BN folds backward)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.bn(torch.relu(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class CenterFaceStyle(nn.Module):
    """CenterFace-style face detector: MobileNetV2 stem and inverted residuals, a ConvTranspose+BN upsampling neck
    with a lateral 1x1 Conv+BN, and four 1x1 heads (heatmap, box scale, offset, five landmarks)."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_relu(3, 16, stride=2)
        self.stage1 = InvertedResidual(16, 16, stride=1, expand=2)
        self.stage2 = nn.Sequential(InvertedResidual(16, 24, stride=2, expand=3),
                                    InvertedResidual(24, 24, stride=1, expand=3))
        self.up = nn.ConvTranspose2d(24, 16, 4, stride=2, padding=1, bias=False)
        self.up_bn = nn.BatchNorm2d(16)
        self.lateral = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.neck = _conv_bn_relu(16, 16)
        self.heads = nn.ModuleList(nn.Conv2d(16, channels, 1) for channels in (1, 2, 2, 10))

    def forward(self, x):
        low = self.stage1(self.stem(x))
        up = torch.relu(self.up_bn(self.up(self.stage2(low))))
        feature = self.neck(up + self.lateral(low))
        heatmap, scale, offset, landmarks = (head(feature) for head in self.heads)
        return torch.sigmoid(heatmap), scale, offset, landmarks


def resnet_style() -> nn.Module:
    """ResNet-style classifier: Conv+BN stem and residual blocks with Conv+BN shortcuts."""
    return _build(ResNetStyle)


def mobilenet_style() -> nn.Module:
    """MobileNetV2-style classifier: depthwise separable inverted residual blocks, every conv followed by BN."""
    return _build(MobileNetStyle)


def convtranspose_decoder() -> nn.Module:
    """Decoder of ConvTranspose+BN, including grouped (groups=2) and depthwise transposed convolutions."""
    return _build(ConvTransposeDecoder)


def mlp_bn1d() -> nn.Module:
    """MLP with Linear->BatchNorm1d (Gemm or MatMul followed by BN in ONNX)."""
    return _build(MlpBn1d)


def audio_conv1d() -> nn.Module:
    """1-D convolutional audio net on raw waveforms."""
    return _build(AudioConv1d)


def conv3d_net() -> nn.Module:
    """3-D convolutional net on short video clips."""
    return _build(Conv3dNet)


def densenet_block() -> nn.Module:
    """DenseNet-style block: BN before conv (BN->ReLU->Conv and BN->Conv) and a trailing standalone BN."""
    return _build(DenseNetBlock)


def two_branch() -> nn.Module:
    """A conv output consumed by two BN branches and a skip; a conv with shared weights used twice."""
    return _build(TwoBranch)


def repvgg_style() -> nn.Module:
    """RepVGG-style classifier in its training structure: parallel 3x3, 1x1 and identity-BN branches per block."""
    return _build(RepVGGStyle)


def mobileone_style() -> nn.Module:
    """MobileOne-style classifier in its training structure: parallel depthwise and pointwise branches."""
    return _build(MobileOneStyle)


def mixconv_style() -> nn.Module:
    """MixNet-style block: parallel convs of three kernel sizes, concatenated, then one BN (Concat -> BN)."""
    return _build(MixConvStyle)


def token_mlp() -> nn.Module:
    """LeViT-style LinearNorm layers on tokens: MatMul -> Reshape [B*N, C] -> BatchNorm1d."""
    return _build(TokenMlp)


def convmixer_head() -> nn.Module:
    """ConvMixer-style head: BN -> global average pool -> flatten -> Linear."""
    return _build(ConvMixerHead)


def centerface_style() -> nn.Module:
    """CenterFace-style detector (four outputs), exported as old PyTorch did: see INITIALIZER_INPUT_EXPORTS."""
    return _build(CenterFaceStyle)


def repmixer_style() -> nn.Module:
    """FastViT-style RepMixer blocks: x + gamma * (mixer(x) - norm(x)), branches merged through the Sub."""
    from .zoo_folds import RepMixerStyle

    return _build(RepMixerStyle)


def pooled_head_style() -> nn.Module:
    """CoAtNet-style BN -> AvgPool2d -> Conv 1x1 (unpadded, and padded with count_include_pad=False)."""
    from .zoo_folds import PooledHeadStyle

    return _build(PooledHeadStyle)


def preact_sum_style() -> nn.Module:
    """Pre-activation ResNetV2 / RegNet-style stage: the final BN after the sum of a residual and a shortcut Conv."""
    from .zoo_folds import PreActSumStyle

    return _build(PreActSumStyle)


def split_norm_style() -> nn.Module:
    """timm lambda layer: one qkv Conv split along the channels, BN on the q and v parts."""
    from .zoo_folds import SplitNormStyle

    return _build(SplitNormStyle)


def token_norm_style() -> nn.Module:
    """FastViT / Next-ViT attention blocks: BN2d -> [B, HW, C] tokens -> Linear, and AvgPool1d -> BatchNorm1d."""
    from .zoo_folds import TokenNormStyle

    return _build(TokenNormStyle)


def botnet_style() -> nn.Module:
    """BoTNet-style bottleneck attention: a BN after softmax(q kᵀ) @ v, stride 1 and with a 2x2 average pool."""
    from .zoo_folds import BotNetStyle

    return _build(BotNetStyle)


FACTORIES = {
    "resnet_style": resnet_style,
    "mobilenet_style": mobilenet_style,
    "convtranspose_decoder": convtranspose_decoder,
    "mlp_bn1d": mlp_bn1d,
    "audio_conv1d": audio_conv1d,
    "conv3d_net": conv3d_net,
    "densenet_block": densenet_block,
    "two_branch": two_branch,
    "repvgg_style": repvgg_style,
    "mobileone_style": mobileone_style,
    "mixconv_style": mixconv_style,
    "token_mlp": token_mlp,
    "convmixer_head": convmixer_head,
    "repmixer_style": repmixer_style,
    "pooled_head_style": pooled_head_style,
    "preact_sum_style": preact_sum_style,
    "split_norm_style": split_norm_style,
    "token_norm_style": token_norm_style,
    "botnet_style": botnet_style,
}

# Architectures stored as old PyTorch exporters wrote them by default (keep_initializers_as_inputs=True: every
# initializer also a graph input, as in CenterFace and many other third-party files): name -> (factory, example
# input shape). models/build_zoo.py writes models/zoo/<name>_initializer_inputs.onnx, dynamic batch, height, width.
INITIALIZER_INPUT_EXPORTS = {
    "centerface_style": (centerface_style, (1, 3, 64, 64)),
}

INPUT_SHAPES = {
    "resnet_style": (2, 3, 32, 32),
    "mobilenet_style": (2, 3, 32, 32),
    "convtranspose_decoder": (2, 16, 6, 6),
    "mlp_bn1d": (4, 32),
    "audio_conv1d": (2, 1, 512),
    "conv3d_net": (2, 2, 6, 12, 12),
    "densenet_block": (2, 8, 12, 12),
    "two_branch": (2, 3, 16, 16),
    "repvgg_style": (2, 3, 32, 32),
    "mobileone_style": (2, 3, 32, 32),
    "mixconv_style": (2, 3, 32, 32),
    "token_mlp": (2, 7, 16),
    "convmixer_head": (2, 3, 16, 16),
    "repmixer_style": (2, 3, 16, 16),
    "pooled_head_style": (2, 3, 16, 16),
    "preact_sum_style": (2, 3, 16, 16),
    "split_norm_style": (2, 3, 16, 16),
    "token_norm_style": (2, 3, 16, 16),
    "botnet_style": (2, 3, 8, 8),
}
