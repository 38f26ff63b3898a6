# Runtime shared by the three tasks: only MMEngine hooks and visualizer, so
# it works under any default_scope (each task config sets its own).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Atomic saves and generator states: a killed run resumes exactly.
    checkpoint=dict(
        type='patchscale_mm.ResumableCheckpointHook',
        interval=1,
        max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo when there is no GPU.
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
# Checkpoints hold only plain data, so they load with weights_only=True;
# training stops at the first non-finite loss, before it is saved.
custom_hooks = [
    dict(type='patchscale_mm.WeightsOnlyCheckpointHook'),
    dict(type='patchscale_mm.NonFiniteLossHook'),
]
custom_imports = dict(
    imports=['patchscale_mm.models', 'patchscale_mm.engine'],
    allow_failed_imports=False)
