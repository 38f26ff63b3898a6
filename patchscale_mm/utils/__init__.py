from .launch import (add_rank_log_file, apply_cli_options,
                     init_cpu_distributed, shutdown_distributed)

__all__ = [
    'add_rank_log_file', 'apply_cli_options', 'init_cpu_distributed',
    'shutdown_distributed'
]
