"""Wan2.1 I2V-14B-720P: i2v_14b_480p at area 1280*720, shift 5. Same command with configs/sample/i2v_14b_720p.py."""
from configs.sample import i2v_14b_480p
def get_config(arg=None): return i2v_14b_480p.get_config("area=1280*720,shift=5.0" + (f",{arg}" if arg else ""))  # noqa: E704
