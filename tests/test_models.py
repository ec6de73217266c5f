import pytest
import torch

from suite.models.resnet import DEPTHS, PreActResNet, preact_resnet


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_depths_are_basic_block_stacks(depth):
    model = preact_resnet(depth, num_classes=10, width=1 / 16)
    assert [len(s) for s in model.stages] == list(DEPTHS[depth])
    # Stem conv + 2 convs per block + one 1x1 shortcut in each of stages 2-4 + classifier.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * sum(DEPTHS[depth]) + 3


def test_resnet101_layout_matches_the_resist_code():
    model = preact_resnet(101, num_classes=100)
    assert [len(s) for s in model.stages] == [3, 4, 23, 3]
    assert len(model.partitionable_blocks()) == 22  # stage-3 blocks 2..23
    assert all(b.skippable for b in model.partitionable_blocks())
    assert model.stem.stride == (1, 1) and model.fc.in_features == 512
    widths = [s[0].conv1.out_channels for s in model.stages]
    assert widths == [64, 128, 256, 512]
    # Stages 2-4 start with stride 2 and a 1x1 shortcut without bias.
    for stage in list(model.stages)[1:]:
        assert stage[0].conv1.stride == (2, 2)
        assert stage[0].shortcut.kernel_size == (1, 1) and stage[0].shortcut.bias is None


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 32), (3, 64)])
def test_input_follows_the_data(channels, size):
    model = preact_resnet(18, num_classes=7, in_channels=channels, width=1 / 16)
    assert model(torch.randn(4, channels, size, size)).shape == (4, 7)


def test_inactive_block_is_identity_and_scale_multiplies_residual_only():
    torch.manual_seed(0)
    model = preact_resnet(34, num_classes=10, width=1 / 16)
    block = model.stages[2][1]
    x = torch.randn(2, block.conv1.in_channels, 4, 4)
    full = block(x)
    block.active = False
    assert torch.equal(block(x), x)
    block.active = True
    block.residual_scale = 0.25
    assert torch.allclose(block(x), x + 0.25 * (full - x), atol=1e-6)


def test_bn_modes():
    batch = preact_resnet(18, 10, width=1 / 16, bn="batch")
    running = preact_resnet(18, 10, width=1 / 16, bn="running")
    none = preact_resnet(18, 10, width=1 / 16, bn="none")
    assert all(
        not b.track_running_stats for b in batch.modules() if isinstance(b, torch.nn.BatchNorm2d)
    )
    assert any(
        isinstance(b, torch.nn.BatchNorm2d) and b.running_mean is not None
        for b in running.modules()
    )
    assert not any(isinstance(b, torch.nn.BatchNorm2d) for b in none.modules())
    # batch statistics at test time: eval output depends on the batch, as in the ResIST code
    batch.eval()
    x = torch.randn(8, 3, 32, 32)
    assert not torch.allclose(batch(x)[:4], batch(x[:4]))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="valid"):
        preact_resnet(50, 10)
    with pytest.raises(ValueError, match="bn must be"):
        PreActResNet(bn="group")  # type: ignore[arg-type]
