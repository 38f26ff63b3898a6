# Parameters trained without weight decay in every recipe: norms, biases,
# the class token and position embedding (DeiT), and the per-head dynamics of
# the Mamba-2 mixer (A_log, D, dt_bias, as mamba_ssm marks them).
no_decay = dict(decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.cls_token': no_decay,
            '.pos_embed': no_decay,
            '.A_log': no_decay,
            '.D': no_decay,
            '.dt_bias': no_decay,
        }))
