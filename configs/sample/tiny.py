"""CPU demo and CLI test preset: a random tiny DiT + tiny VAE, hashed text contexts, 3 UniPC steps, 48x32, 5 frames.

No weights needed; the video is noise-like by construction (random weights). Used by tests/cli.
python -m infer.sample --config configs/sample/tiny.py --config.prompt="a tiny test" --config.output_dir=/tmp/out
I2V (random tiny CLIP too; `size` is then the pixel area, the aspect comes from the image):
python -m infer.sample --config configs/sample/tiny.py:i2v --config.image=cat.png --config.output_dir=/tmp/out
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, solver="unipc", steps=3, i2v=False)
  c = common.sample_defaults(arg)
  c.model = "tiny_i2v" if arg.i2v else "tiny"
  c.random_init = True                      # random DiT and VAE from the seed; contexts hashed from prompts
  c.dtype = "float32"
  c.prompt = "a tiny test video"
  c.size = "48*32"                          # W*H; distinct sides so a swapped axis shows
  c.frames = 5
  c.solver = arg.solver
  c.num_steps = arg.steps
  c.timesteps = (1000, 750, 500, 250)[:arg.steps] if arg.solver in ("euler", "consistency") else ()
  c.shift = 5.0
  c.cfg_scale = 5.0
  c.compilation_cache = ""                  # keep tests hermetic
  return c
