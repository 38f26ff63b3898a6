"""Converting a checkpoint file by source name, and the command line of
``tools/model_converters/*.py``."""
import argparse
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from patchscale_mm.engine.checkpoint_io import CheckpointError
from ..layers import to_2tuple
from .adventurer import ADVENTURER_RULES, convert_adventurer
from .files import WRAPPER_KEYS, load_source_state_dict, save_checkpoint
from .rules import ConversionError, StateDict, map_keys
from .timm_vit import TIMM_VIT_RULES, convert_timm_vit

CONVERTERS: Dict[str, Callable[..., Tuple[StateDict, dict]]] = {
    'timm_vit': convert_timm_vit,
    'adventurer': convert_adventurer,
}
RULES = {'timm_vit': TIMM_VIT_RULES, 'adventurer': ADVENTURER_RULES}


def describe_mapping(state_dict: StateDict, source: str) -> List[str]:
    """Lines ``source -> target shape`` and the unmatched keys, for
    ``--dry-run``."""
    mapped, sources, unmatched = map_keys(state_dict, RULES[source])
    lines = [f'{sources[k]} -> {k} {tuple(v.shape)}'
             for k, v in mapped.items()]
    lines.append(f'{len(unmatched)} unmatched source keys'
                 + (f': {", ".join(unmatched)}' if unmatched else ''))
    return lines


def convert_file(src: str,
                 dst: Optional[str],
                 source: str,
                 key: Optional[str] = None,
                 patch_size: Optional[Sequence[int]] = None,
                 img_size: Optional[Sequence[int]] = None,
                 dry_run: bool = False,
                 log: Callable[[str], None] = print,
                 **kwargs) -> dict:
    """Converts the checkpoint file ``src`` into ``dst``.

    Args:
        src (str): Source checkpoint (loaded weights-only).
        dst (str, optional): Output path; not needed with ``dry_run``.
        source (str): ``'timm_vit'`` or ``'adventurer'``.
        key (str, optional): Wrapper entry to read; see
            :func:`unwrap_state_dict`.
        patch_size, img_size (Sequence[int], optional): Resample to these.
        dry_run (bool): Print the mapping and unmatched keys, check, write
            nothing. Defaults to False.
        log (callable): Where progress lines go. Defaults to ``print``.
        **kwargs: More arguments of the source's converter.

    Returns:
        dict: The meta information (also stored in ``dst``).

    Raises:
        CheckpointError: One line (a :class:`ConversionError` for mapping
            problems), raised before anything is written.
    """
    state_dict, where = load_source_state_dict(src, key)
    log(f'read {len(state_dict)} tensors from {src} ({where})')
    if dry_run:
        for line in describe_mapping(state_dict, source):
            log(line)
    mapped, meta = CONVERTERS[source](
        state_dict, patch_size=patch_size, img_size=img_size, **kwargs)
    meta.update(converted_from=osp.basename(src), source=source,
                source_entry=where)
    for note in meta['adapted']:
        log(f'adapted: {note}')
    if dry_run:
        log(f'dry run: {len(mapped)} tensors would be written; checks passed')
        return meta
    if not dst:
        raise ConversionError('no output path given')
    save_checkpoint(dict(mapped), meta, dst)
    log(f'wrote {len(mapped)} tensors to {dst}; backbone config: '
        f'{meta["backbone"]}')
    return meta


def _size(text: str) -> Tuple[int, int]:
    """``'224'`` or ``'224,320'`` -> (h, w)."""
    try:
        values = [int(v) for v in text.split(',')]
        return to_2tuple(values[0] if len(values) == 1 else values)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected N or H,W, got {text!r}') from None


def converter_main(source: str,
                   description: str,
                   argv: Optional[Sequence[str]] = None) -> int:
    """The converters' command line; returns the exit status.

    Every error is one ``error: ...`` line on stderr and status 1, and the
    output file is not touched.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='source checkpoint (loaded weights-only)')
    parser.add_argument(
        'dst', nargs='?', help='output .pth (not needed with --dry-run)')
    parser.add_argument(
        '--key',
        help='entry holding the weights (default: the first of '
        f'{", ".join(WRAPPER_KEYS)}, else the file itself)')
    parser.add_argument(
        '--patch-size',
        type=_size,
        help='resample the patch embedding to this patch size (pinv), N or '
        'H,W')
    parser.add_argument(
        '--img-size',
        type=_size,
        help='resample the position embedding to the grid of this image '
        'size, N or H,W (default: the checkpoint\'s)')
    if source == 'timm_vit':
        parser.add_argument(
            '--num-heads',
            type=int,
            help='attention heads recorded in the meta config (default: the '
            'arch zoo\'s, else width / 64)')
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the key mapping and unmatched keys, check, write nothing')
    args = parser.parse_args(argv)
    if not args.dry_run and not args.dst:
        parser.error('dst is required unless --dry-run is given')
    kwargs = {}
    if getattr(args, 'num_heads', None):
        kwargs['num_heads'] = args.num_heads
    try:
        convert_file(
            args.src,
            args.dst,
            source,
            key=args.key,
            patch_size=args.patch_size,
            img_size=args.img_size,
            dry_run=args.dry_run,
            **kwargs)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
