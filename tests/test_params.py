"""Parameter counts against closed forms and the paper's Table 7."""
import pytest
from tool_scripts import load_tool

get_params = load_tool('get_params')

DIMS = dict(t=192, s=384, b=768, l=1024, h=1280)
DEPTH = dict(t=12, s=12, b=12, l=24, h=32)
ADV_DIMS = dict(t=256, s=512, b=768, l=1024, h=1280)
ADV_MLP = dict(t=640, s=1280, b=1920, l=2560, h=3200)


def vit_params(arch, img, p, classes=1000):
    D, depth, tokens = DIMS[arch], DEPTH[arch], (img // p)**2
    block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (8 * D * D + 5 * D)
    stem = 3 * p * p * D + D + D + (tokens + 1) * D
    return stem + depth * block + 2 * D + D * classes + classes


def adventurer_params(arch, img, p, classes=1000):
    D, M, depth = ADV_DIMS[arch], ADV_MLP[arch], DEPTH[arch]
    E, n = 2 * D, 64
    H = E // 64
    mixer = (D * (2 * E + 2 * n + H) + 5 * (E + 2 * n) + 3 * H + E + E * D)
    swiglu = 2 * (D * M + M) + M * D + D
    block = 2 * D + mixer + swiglu
    stem = 3 * p * p * D + D + D + ((img // p)**2 + 1) * D
    return stem + depth * block + D + D * classes + classes


@pytest.mark.parametrize('arch', list(DIMS))
@pytest.mark.parametrize('patch', [16, 2])
def test_counts_match_closed_form(arch, patch):
    assert get_params.count_params('deit', arch, 224, patch) == vit_params(
        arch, 224, patch)
    assert get_params.count_params('adventurer', arch, 224,
                                   patch) == adventurer_params(arch, 224, patch)


@pytest.mark.parametrize('family,arch', [(f, a) for f in ('deit', 'adventurer')
                                         for a in DIMS])
def test_counts_match_paper_table7(family, arch):
    ours = get_params.count_params(family, arch, 224, 16) / 1e6
    paper = get_params.PAPER_PARAMS_M[family][arch]
    if (family, arch) == ('adventurer', 'h'):
        # Table 7's 759M does not follow from its own dims (1280 wide, 32
        # blocks, MLP 3200); those dims give 718M.
        assert ours == pytest.approx(718.0, abs=0.5)
    else:
        # The table rounds (DeiT-T is 5.7M, DeiT-H 632M).
        assert ours == pytest.approx(paper, abs=1.3)
