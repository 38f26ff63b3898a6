from .launch import (add_rank_log_file, apply_cli_options,
                     init_cpu_distributed, shutdown_distributed,
                     synchronize_ranks)

__all__ = [
    'add_rank_log_file', 'apply_cli_options', 'init_cpu_distributed',
    'shutdown_distributed', 'synchronize_ranks'
]
