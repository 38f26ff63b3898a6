"""The paper's measured costs that the analytic model is checked against."""

# Table 6 (DeiT-B / Adventurer-B, 224 px): patch -> per-image training
# memory of DeiT-B in MB (fp16 with FlashAttention) and A100 GPU-hours per
# ImageNet epoch of both models.
PAPER_TABLE6 = {
    16: dict(tokens=196, deit_memory_mb=62, deit_hours=0.36, adv_hours=0.45),
    8: dict(tokens=784, deit_memory_mb=252, deit_hours=1.86, adv_hours=1.76),
    4: dict(tokens=3136, deit_memory_mb=1024, deit_hours=9.79,
            adv_hours=6.86),
    2: dict(tokens=12544, deit_memory_mb=4057, deit_hours=80.06,
            adv_hours=27.45),
    1: dict(tokens=50176, deit_memory_mb=16118, deit_hours=967.99,
            adv_hours=115.08),
}
