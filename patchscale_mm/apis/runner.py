"""Running a loaded config: the Runner (or ``cfg.runner_type``) built and
one of its loops called, inside the process group of a distributed run."""
import gc

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from patchscale_mm.parallel import (init_sequence_parallel,
                                    prepare_sequence_parallel,
                                    sequence_parallel_size, set_current)
from .distributed import (add_rank_log_file, init_cpu_distributed,
                          shutdown_distributed, synchronize_ranks)


def run(cfg: Config, method: str):
    """Builds the Runner (or ``cfg.runner_type``) and calls
    ``runner.<method>()``, in a gloo process group on a distributed run
    without GPUs."""
    init_cpu_distributed(cfg)
    sequence_size = sequence_parallel_size(cfg) if method == 'train' else 1
    if sequence_size > 1:
        prepare_sequence_parallel(cfg)
    runner = None
    try:
        runner = (
            RUNNERS.build(cfg)
            if 'runner_type' in cfg else Runner.from_cfg(cfg))
        if sequence_size > 1:  # the process group exists now
            group = init_sequence_parallel(sequence_size)
            runner.logger.info(
                f'sequence parallelism: each image split over {group.size} '
                f'ranks, {group.dp_size} data-parallel replica(s); this rank '
                f'holds shard {group.rank} of replica {group.dp_rank}')
        add_rank_log_file(runner)
        getattr(runner, method)()
        synchronize_ranks()
    finally:
        # The Runner's DDP wrapper holds the process group: drop it first, so
        # that the group is torn down here and not during interpreter exit.
        del runner
        set_current(None)
        gc.collect()
        shutdown_distributed()
