"""The paper's results, read from the OpenMMLab metafiles that
``model-index.yml`` imports, and the README's model-zoo tables written from
them."""
from pathlib import Path

import yaml

from zoo_recipes import (CLS_STAGES, EXTEND_FROM, EXTENDED, FAMILY_NAMES,
                         cls_name)

README_MARKERS = ('<!-- model-zoo:start -->', '<!-- model-zoo:end -->')
# task -> (the README's name of its metric, the metafile metrics it shows)
TASK_METRICS = dict(
    cls=('ImageNet top-1', ('Top 1 Accuracy', )),
    seg=('ADE20k mIoU', ('mIoU', )),
    det=('COCO AP box / mask', ('box AP', 'mask AP')))


def read_metafiles(root: Path) -> list:
    """The ``Models`` of every metafile in ``root/model-index.yml``."""
    index = yaml.safe_load((root / 'model-index.yml').read_text())
    return [
        model for metafile in index['Import']
        for model in yaml.safe_load((root / metafile).read_text())['Models']
    ]


def paper_results(models: list) -> dict:
    """``{config path: {metric: value}}`` over the models' results."""
    return {
        model['Config']: {
            name: value
            for result in model['Results']
            for name, value in result['Metrics'].items()
        }
        for model in models
    }


def paper_value(results: dict, path: str, task: str) -> str:
    metrics = results.get(path)
    if not metrics:
        return '-'
    return ' / '.join(str(metrics[name]) for name in TASK_METRICS[task][1])


def config_link(path: str) -> str:
    return f'[{Path(path).name}]({path})'


def readme_tables(rows, results: dict) -> str:
    """One table per task from ``rows`` of ``(task, model, patch, input,
    tokens, config path, 'GPUs x batch | GiB')``, then Table 5's."""
    lines = []
    for task, (metric, _) in TASK_METRICS.items():
        lines += [
            f'\n**{metric}**\n',
            f'| model | patch | input | tokens | paper {metric} | config '
            '| GPUs x batch | GiB per GPU |',
            '|---|---|---|---|---|---|---|---|'
        ]
        for row_task, model, patch, size, tokens, path, plan in rows:
            if row_task == task:
                lines.append(f'| {model} | {patch} | {size} | {tokens:,} | '
                             f'{paper_value(results, path, task)} | '
                             f'{config_link(path)} | {plan} |')
    return '\n'.join(lines) + '\n' + table5_table(results)


def table5_table(results: dict) -> str:
    """Table 5: the same sequence lengths by extending (interpolated patch-16
    tokens) and by scaling (smaller patches), last stage of each chain."""
    lines = [
        '\n**Sequence length, by extending vs by scaling (Table 5)**\n',
        '| model | input | tokens | by extending: paper top-1 | config | '
        'by scaling: paper top-1 | config |', '|---|---|---|---|---|---|---|'
    ]
    for (family, arch, size), patches in EXTENDED.items():
        stage = CLS_STAGES[(family, size)][-1]
        for patch in patches:
            scaling = f'configs/cls/{cls_name(family, arch, size, patch, stage)}.py'
            extending = scaling if patch == EXTEND_FROM else (
                'configs/cls/'
                f'{cls_name(family, arch, size, patch, stage, extend=True)}.py')
            lines.append(
                f'| {FAMILY_NAMES[family]}-{arch.upper()} | {size}px | '
                f'{(size // patch)**2:,} | '
                f'{paper_value(results, extending, "cls")} | '
                f'{config_link(extending)} | '
                f'{paper_value(results, scaling, "cls")} | '
                f'{config_link(scaling)} |')
    return '\n'.join(lines) + '\n'
