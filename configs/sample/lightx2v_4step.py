"""LightX2V 4-step distilled Wan2.1 (T2V-14B or I2V-14B-480P), CFG-free (spec distillation.md §5).

Step list (1000, 750, 500, 250) warped with shift 5 → σ = (1, 0.9375, 0.8333, 0.625); the DiT sees float
timesteps 1000·σ. Solver "consistency" (fresh noise each step; what the model was trained for) by default,
"euler" (LightX2V HEAD, deterministic) with `:euler` or --config.solver=euler.

python -m infer.sample --config configs/sample/lightx2v_4step.py:model=t2v_14b \
  --config.weights=/ckpt/wan2.1_t2v_14b_lightx2v_4step.safetensors --config.text_encoder=/ckpt/umt5 \
  --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae --config.prompt="A cat surfing a wave"
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_14b", euler=False)
  c = common.sample_defaults(arg)
  c.model = arg.model                       # t2v_14b | i2v_14b (480p)
  c.size = "832*480"                        # T2V size; I2V: pixel area
  c.distilled = True
  c.solver = "euler" if arg.euler else "consistency"
  c.timesteps = (1000, 750, 500, 250)
  c.num_steps = 4
  c.shift = 5.0
  c.cfg_scale = 1.0                         # distilled: CFG off (CFG > 1 blurs)
  return c
