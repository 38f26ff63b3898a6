"""Writes the leaf configs of the model zoo and its README tables.

Every shipped recipe is a few lines that inherit from ``configs/_base_`` and
set the arch, patch and input size; this script writes them from the grid and
recipes of ``zoo_recipes.py`` and the README's model-zoo tables with the
paper's results from the metafiles (``configs/*/metafile.yml``, listed in
``model-index.yml``). Run it after changing either; ``--check`` fails when
the files on disk differ from what it would write or a metafile lists a
config it does not write (the test suite runs it).

    python tools/misc/generate_configs.py [--check]
"""
import argparse
import re
import sys
from pathlib import Path

from zoo_configs import (GENERATED, cls_config, dataset_base, det_config,
                         extend_config, seg_config)
from zoo_recipes import (ARCH_NAMES, CLS_PATCHES, CLS_STAGES, DET_BASES,
                         DET_PATCHES, DOWNSTREAM_ARCHS, EXTEND_FROM, EXTENDED,
                         EXTRA_CHAINS, FAMILY_NAMES, SEG_BASES, SEG_HEADS,
                         SEG_PATCHES, STAGE_DATA, WRITTEN_DATA_SIZES,
                         chain_stages, cls_name, det_name, det_side, gpu_plan,
                         recipe_batch, seg_name, stage_batch)
from zoo_tables import (README_MARKERS, paper_results, read_metafiles,
                        readme_tables)

ROOT = Path(__file__).resolve().parents[2]


def cls_row(family: str, arch: str, size: int, patch: int, stage: str,
            path: str, three_stages: bool) -> tuple:
    model = f'{FAMILY_NAMES[family]}-{arch.upper()}'
    if three_stages:
        model += f' ({stage})'
    plan = gpu_plan(family, arch, size, patch, *stage_batch(family, arch, stage))
    return ('cls', model, patch, f'{size}px', (size // patch)**2, path, plan)


def extra_chains():
    """Yields (relative path, text, README row) for the chains of
    ``EXTRA_CHAINS`` (their pretraining only where the grid lacks it), then
    the dataset bases they need."""
    sizes = set()
    for family, arch, patch, pretrained_at, size in EXTRA_CHAINS:
        stages = [(pretrained_at, 'pretrain')] + [
            (size, stage) for stage in chain_stages(family, size)]
        for stage_size, stage in stages:
            if stage == 'pretrain' and patch in CLS_PATCHES.get(
                    (family, stage_size), ()):
                continue
            sizes.add((stage_size, STAGE_DATA[(family, stage)]))
            path = f'configs/cls/{cls_name(family, arch, stage_size, patch, stage)}.py'
            row = cls_row(family, arch, stage_size, patch, stage, path,
                          three_stages=True)
            yield path, cls_config(family, arch, stage_size, patch, stage,
                                   pretrained_at, chain_length=3), row
    for size, augmentation in sorted(sizes):
        if size not in WRITTEN_DATA_SIZES:
            yield (f'configs/_base_/datasets/imagenet_{size}{augmentation}.py',
                   dataset_base(size, augmentation), None)


def zoo():
    """Yields (relative path, text, README row or None) for every leaf
    config and generated dataset base."""
    for (family, size), patches in CLS_PATCHES.items():
        stages = CLS_STAGES[(family, size)]
        for arch in ARCH_NAMES:
            for patch in patches:
                for stage in stages:
                    path = (f'configs/cls/'
                            f'{cls_name(family, arch, size, patch, stage)}.py')
                    row = cls_row(family, arch, size, patch, stage, path,
                                  len(stages) > 1 or size == 224 and family == 'adv')
                    yield path, cls_config(family, arch, size, patch,
                                           stage), row
    yield from extra_chains()
    for (family, arch, size), patches in EXTENDED.items():
        for patch in patches:
            if patch == EXTEND_FROM:
                continue
            for stage in (('pretrain', ) if family == 'deit' else
                          ('pretrain', 'intermediate', 'finetune')):
                stage_size = 128 if stage == 'pretrain' else size
                stem = cls_name(family, arch, stage_size, patch, stage,
                                extend=True)
                yield (f'configs/cls/{stem}.py',
                       extend_config(family, arch, stage_size, patch, stage),
                       None)
    for arch in DOWNSTREAM_ARCHS:
        for head in SEG_HEADS:
            for patch in SEG_PATCHES:
                path = f'configs/seg/{seg_name(arch, head, patch)}.py'
                row = ('seg', f'Adventurer-{arch.upper()} + {head}', patch,
                       '512x512', (512 // patch)**2, path,
                       gpu_plan('adv', arch, 512, patch, *recipe_batch(*SEG_BASES)))
                yield path, seg_config(arch, head, patch), row
    for arch in DOWNSTREAM_ARCHS:
        for patch in DET_PATCHES:
            path = f'configs/det/{det_name(arch, patch)}.py'
            divisor = max(32, patch)  # the padding of the data preprocessor
            h, w = (-(-side // divisor) * divisor for side in (800, 1333))
            row = ('det', f'Adventurer-{arch.upper()}', patch, '800x1333',
                   (h // patch) * (w // patch), path,
                   gpu_plan('adv', arch, det_side(patch), patch,
                            *recipe_batch(*DET_BASES)))
            yield path, det_config(arch, patch), row


def unknown_metafile_configs(models: list, paths: set) -> list:
    """Metafile entries whose config this script does not write, or whose
    name is not their config's stem."""
    return [
        model['Name'] for model in models
        if model['Config'] not in paths
        or Path(model['Config']).stem != model['Name']
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--check',
        action='store_true',
        help='exit 1 if any generated file differs from the one on disk')
    args = parser.parse_args()

    entries = list(zoo())
    models = read_metafiles(ROOT)
    unknown = unknown_metafile_configs(models, {path for path, *_ in entries})
    if unknown:
        sys.exit(f'metafile entries without a generated config of their '
                 f'name: {", ".join(unknown)}')
    expected = {ROOT / path: text for path, text, _ in entries}
    readme = ROOT / 'README.md'
    start, end = README_MARKERS
    old = readme.read_text()
    if start not in old or end not in old:
        sys.exit(f'README.md lacks the markers {start} ... {end}')
    tables = readme_tables([r for *_, r in entries if r], paper_results(models))
    expected[readme] = re.sub(
        re.escape(start) + '.*?' + re.escape(end),
        lambda _: start + '\n' + tables + end, old, flags=re.S)
    # Leaf configs on disk that the grid no longer lists are stale too.
    generated_dirs = [ROOT / 'configs' / task for task in ('cls', 'seg', 'det')]
    generated_dirs.append(ROOT / 'configs' / '_base_' / 'datasets')
    stale = [p for d in generated_dirs for p in sorted(d.glob('*.py'))
             if p not in expected and GENERATED in p.read_text()]

    changed = [p for p, text in expected.items()
               if not p.exists() or p.read_text() != text]
    if args.check:
        for path in changed + stale:
            print(f'out of date: {path.relative_to(ROOT)}')
        sys.exit(1 if changed or stale else 0)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path])
    for path in stale:
        path.unlink()
    print(f'{len(entries)} configs; wrote {len(changed)}, removed '
          f'{len(stale)}')


if __name__ == '__main__':
    main()
